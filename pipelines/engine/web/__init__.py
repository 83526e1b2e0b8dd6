"""Downloads from the web, as both downloaders (images, videos) make them: every hop checked, the
connection pinned to the address that was checked, one deadline per fetch (docs/security.md).

    url_guard.py    URL, address and redirect checks; the socket guard yt-dlp runs inside
    http_fetch.py   lwmkit's own HTTP(S) client: pinned TLS connections, proxies checked
"""
