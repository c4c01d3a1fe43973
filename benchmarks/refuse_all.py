"""The cheapest refusal an HTTP server can make: a bare ASGI app under uvicorn (as `mmpipe serve`
runs it: uvloop, httptools) that answers every POST 429 with a prebuilt OpenAI-style body, reading
nothing (a GET gets 200: it is up). What refusing costs, whatever the server does, for
`serve_runs.refusal_floor`.

    python benchmarks/refuse_all.py PORT
"""

import sys

import uvicorn

BODY = (b'{"error":{"message":"server overloaded; retry later","type":"rate_limit_error",'
        b'"param":null,"code":"overloaded"}}')
HEADERS = [(b"content-length", str(len(BODY)).encode()), (b"content-type", b"application/json"),
           (b"retry-after", b"1")]


async def app(scope, receive, send):
    if scope["type"] == "http":
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 429, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
