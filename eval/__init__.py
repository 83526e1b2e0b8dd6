"""Evaluation (needle-in-a-haystack generator and evaluator).

It may import `lwmkit.lwm_model`, `lwmkit.tokenizers` and `lwmkit.packing`. Importing it does not
import JAX: only `LWMModelBackend` loads `lwmkit.lwm_model` (and JAX), when it is built.

    haystack.py      text haystacks (.txt, .jsonl(.zst), document shards) cut into sentence units
    needles.py       distinct keys and values (cities, words, UUIDs, variable names, 7-digit numbers)
    tasks.py         tasks (LWM single/multi, RULER multikey/multivalue/multiquery/variable tracking),
                     chat templates and length x depth grids
    prompt_layout.py which units and needles go where; renders the prompt (the recipe of a case)
    fitting.py       exact-length contexts under the target tokenizer
    cases.py         case building, JSONL, recipes that rebuild prompts byte for byte
    video_needle.py  a needle image as VQGAN frames in a long video token stream
    case_records.py  cases as lwmkit document records
    backends.py      the Backend protocol: OpenAI-compatible endpoints and lwm_model
    evaluate.py      running cases (concurrency, resume, timing), summaries; scoring.py the rules
    plots.py         the length x depth heatmap and the multi-task summary plot
    cli.py           the `lwm-needle` console script
    inference/media.py         images and videos for chat and generation (frames sampled by count, MP4 out)
    inference/chat_cli.py      `lwm-chat`: chat over an image, a video or a text file with an LWM checkpoint
    inference/generate_cli.py  `lwm-generate`: text to image or video with classifier-free guidance
"""

from lwmkit.eval.backends import Backend, BackendError, LWMModelBackend, OpenAIBackend, TokenPrompt
from lwmkit.eval.case_records import write_case_records
from lwmkit.eval.cases import (
    CaseError,
    build_case,
    build_cases,
    read_cases,
    rebuild_prompt,
    write_cases,
)
from lwmkit.eval.evaluate import evaluate, format_table, read_results, summarize
from lwmkit.eval.encoders import EncoderMismatch
from lwmkit.eval.fitting import HaystackTooSmall, LengthFitError, TokenCounter, fit_context
from lwmkit.eval.haystack import Haystack, HaystackError, HaystackSpec
from lwmkit.eval.inference.chat_cli import ModelLoadError, ModelSpec, chat, chat_prompt, load_model
from lwmkit.eval.inference.generate_cli import generate_media
from lwmkit.eval.inference.media import MediaError, read_frames, sample_frame_indices, write_video
from lwmkit.eval.plots import heatmap, summary_plot
from lwmkit.eval.scoring import score
from lwmkit.eval.tasks import (
    GRID_PRESETS,
    TASK_PRESETS,
    TEMPLATES,
    Grid,
    TaskConfig,
    grid_preset,
    task_preset,
)
from lwmkit.eval.video_needle import (
    VideoHaystack,
    VideoHaystackSpec,
    VideoNeedle,
    build_video_case,
    video_prompt,
)

__all__ = [
    "MediaError",
    "ModelLoadError",
    "ModelSpec",
    "chat",
    "chat_prompt",
    "generate_media",
    "load_model",
    "read_frames",
    "sample_frame_indices",
    "write_video",
    "GRID_PRESETS",
    "TASK_PRESETS",
    "TEMPLATES",
    "Backend",
    "BackendError",
    "CaseError",
    "Grid",
    "Haystack",
    "HaystackError",
    "HaystackSpec",
    "LWMModelBackend",
    "LengthFitError",
    "HaystackTooSmall",
    "EncoderMismatch",
    "OpenAIBackend",
    "TaskConfig",
    "TokenCounter",
    "TokenPrompt",
    "VideoHaystack",
    "VideoHaystackSpec",
    "VideoNeedle",
    "build_case",
    "build_cases",
    "build_video_case",
    "evaluate",
    "fit_context",
    "format_table",
    "grid_preset",
    "heatmap",
    "read_cases",
    "read_results",
    "rebuild_prompt",
    "score",
    "summarize",
    "summary_plot",
    "task_preset",
    "video_prompt",
    "write_case_records",
    "write_cases",
]
