"""A local Banana-compatible (v4) inference server for development, tests and benchmarks.

It speaks the server side of the Banana v4 REST API (see ``BANANA_API.md``):
``POST /start/v4/`` and ``POST /check/v4/`` (each also without the trailing
slash), with demo models built in and any Banana-style model server (the
``POST /`` container contract: Potassium, the sanic serverless-template) usable
behind it. It runs on Starlette and uvicorn, which Airflow 3 already ships.

Command line
============

::

    python -m airflow_provider_banana.devserver --host 127.0.0.1 --port 8000

``--host HOST`` / ``--port PORT``
    Address to bind (default ``127.0.0.1:8000``). ``--port 0`` picks a free port.
    Once serving, one line goes to stdout: ``Banana devserver listening on http://HOST:PORT``.
``--start-hold SECONDS``
    How long a Start without ``startOnly`` waits for the result (default 50).
``--check-hold SECONDS``
    How long a ``longPoll`` Check is held (default 50). A held request is answered
    the moment its call finishes, not at the next poll tick.
``--result-ttl SECONDS``
    How long finished and failed results are kept (default 600); after that a Check
    answers ``taskID does not exist``, as for an unknown call. Sooner, oldest first and
    with a warning in the log, when ``--max-held-bytes`` needs the room.
``--max-held-bytes BYTES``
    The most bytes of inputs (request bodies of calls not yet finished) and outputs
    (encoded JSON of the results kept) the server holds (default 268435456, 256 MiB;
    ``0`` for no cap). Takes ``268435456``, ``256MiB``, ``64KiB``, ``1GB``. Past it the
    oldest results are dropped early; a Start that would pass it even so is refused with a
    v4 error reply (nothing is started); outputs that cannot fit fail their call.
``--replicas N``
    Calls of one model that run at once (default 32). Each model has a FIFO queue
    and N asyncio workers.
``--model KEY=URL`` (repeatable)
    Serve modelKey ``KEY`` from an external model server: the call's
    ``modelInputs`` are POSTed as JSON to ``URL`` exactly as given
    (``http://127.0.0.1:8000`` and ``…:8000/`` reach ``POST /``, ``…:8000/sleep`` reaches a
    Potassium ``@app.handler("/sleep")``, which would answer ``/sleep/`` with 404). A 200 JSON
    reply becomes ``modelOutputs[0]``; 423 means busy: the call goes back to ``queued`` and is
    retried after 0.2 s, backing off to 2 s; any other status, a non-JSON reply or
    a transport failure fails the call with a message naming it and quoting the end of the
    body: its last 5 non-empty lines (an HTML page's text), at most 500 characters, so that a
    traceback's exception line (``ValueError: bad weights``) is in it.
``--model-concurrency N`` / ``--model-concurrency KEY=N`` (repeatable)
    Requests each external model server gets at once (default 1: Potassium runs one handler
    at a time; 0.5.0 queues the others inside itself, 0.4.x answers them 500). Further calls
    wait in the devserver's queue, reported ``queued``. Models whose URLs share
    ``scheme://host:port`` are one server and share the limit (a Potassium app's routes).
    ``N`` sets it for every server, ``KEY=N`` for the server of model ``KEY`` (two keys on one
    server given different values are refused); ``0`` means no limit beyond ``--replicas``.
``--model-timeout SECONDS``
    Bounds one request to an external model server (default 600), counted from when it is
    sent: a call waiting for its turn never times out because others are slow.
``--quirk-empty-message``
    Answer a Start that finished within its hold with ``"message": ""`` and
    ``"callID": ""`` (still ``finished: true`` with the outputs): the form
    recorded from the real service in 2023.
``--require-api-key``
    Accept only the apiKey held in the environment variable
    ``BANANA_DEVSERVER_API_KEY``. The key is never taken on the command line
    (argv is visible to every user through ``ps``), never logged and never echoed.
``--log-level LEVEL``
    ``debug`` logs one line per call state change; ``info`` (default) logs startup
    and admin changes. Request bodies are never logged.
``--access-log``
    Turn on uvicorn's per-request access log (off by default: it costs CPU under load).
``--keep-alive-timeout SECONDS``
    Close a connection that sends nothing for this long, before its first request or
    between two (default 20: longer than aiohttp's own 15 s, so that the client, not the
    server, closes a connection it might be about to reuse). A held request is not idle.
``--backlog N``, ``--http {auto,httptools,h11}``, ``--loop {auto,uvloop,asyncio}``
    Server tuning; ``auto`` prefers httptools and uvloop when installed.

The server raises its soft open-file limit to the hard limit (every held request
is a socket), sets no concurrency cap, and on SIGTERM or SIGINT answers every held
request with the call's current state before it exits. A held Start or Check whose
client disconnects stops being held (and counted) at once; its call runs on.

Replies
=======

Every reply is HTTP 200 JSON with ``id`` (the request's, or a fresh uuid),
``message``, ``created`` (integer Unix seconds) and ``apiVersion``
(``"January 11, 2023"``, a free-form label).

- Start, finished within the hold: ``message "success"``, ``callID "call_<uuid4>"``,
  ``finished true``, ``modelOutputs [<model reply>]``.
- Start, not finished (``startOnly``, or the hold ran out): ``message ""``, the
  ``callID``, ``finished false``, ``modelOutputs null``.
- Start, the call failed within the hold: ``message`` is the call's error
  (contains "error"), the ``callID``, ``finished false``, ``modelOutputs null``.
- Check: ``message`` is ``queued``, ``running``, ``success`` (with
  ``modelOutputs [<reply>]``), the call's error text, or
  ``inference server error: taskID does not exist: task_<uuid>`` for an unknown,
  forgotten or expired ``call_<uuid>``.
- A bad apiKey, malformed JSON, a missing or mistyped field or an unknown
  modelKey: ``message`` like ``error: invalid apiKey``, ``error: invalid JSON body``,
  ``error: missing field 'callID'``, ``error: unknown modelKey 'x'``, with
  ``callID ""``, ``finished false``, ``modelOutputs null``.
- A string holding a lone UTF-16 surrogate (JSON ``"\\ud800"``, which is no text) anywhere
  in the body: ``error: invalid JSON body: field 'apiKey' holds a lone UTF-16 surrogate ...``
  (or ``a string in the body`` for the inputs); an ``id`` longer than 256 characters:
  ``error: field 'id' is N characters long, longer than the 256 allowed``. An ``id`` that
  cannot be echoed (too long, or the surrogate's field) is replaced by a fresh one; nothing
  is started. A model's output that holds a lone surrogate is passed on escaped
  (``\\ud800``), exactly as the model sent it.

Built-in models
===============

``wordcount``
    ``{"prompt": "some text"}`` → ``{"words": 2, "characters": 9, "upper": "SOME TEXT",
    "reversed": "txet emos"}``; no ``prompt`` string fails the call.
``sleep``
    ``{"seconds": 1.5, "result": <any JSON>}`` sleeps, then → ``{"slept": 1.5,
    "result": ...}``. ``{"until": <Unix time>}`` instead sleeps until that instant.
    ``seconds`` defaults to 1 and must be within 0..86400.
``fail``
    Always fails with ``error: model crashed: <inputs.reason or "demo failure">``.
``list``
    Replies with a JSON list, ``inputs.items`` or ``[1, 2, 3]``: ``modelOutputs`` is ``[[...]]``.
``model-error``
    Replies ``{"$error": {"code": "ModelError", "message": ...}}``, which Banana
    reports as a success.
``flaky``
    ``{"key": "k", "fail_times": 2, "seconds": 0}``: the first ``fail_times``
    calls for a key fail, later ones succeed with ``{"key": "k", "attempt": n}``.
    Counters last for the process (an admin reset clears them).
``bytes``
    ``{"size": 1048576, "seed": "a", "seconds": 0}`` → ``{"data": "<size characters>"}``, the
    way an image model replies (a string of megabytes); the text repeats the seed's sha256 in hex.

Except ``fail`` and ``model-error``, which take anything, the built-in models fail
a call whose ``modelInputs`` is not a JSON object. An external ``--model`` with a
built-in's key replaces the built-in.

Admin API (for tests; not part of Banana's API)
===============================================

Open without a token when the server binds a loopback address; off (404) on any other address
unless ``$BANANA_DEVSERVER_ADMIN_TOKEN`` is set; with that set, every ``/_admin/`` request needs
``Authorization: Bearer <token>`` (401 otherwise), whatever the address.

``GET /healthcheck``
    200 ``{"state": "healthy"}``.
``GET /_admin/stats``
    Counters: ``start_requests`` (received, faults included), ``starts_taken``
    (calls created), ``check_requests``, ``long_polls_open`` / ``_max``,
    ``start_holds_open`` / ``_max``, ``running`` / ``_max``, ``queued`` / ``_max``,
    ``finished``, ``failed``, ``faults_served``, ``calls_kept`` and ``per_model``
    ``{key: {"starts_taken", "running", "running_max", "queued", "queued_max"}}``.
    ``running`` counts calls whose model is working on them (for an external model: whose
    request was sent), ``queued`` the ones waiting for a worker, a model-server slot or a
    busy back-off; ``long_polls_open`` and ``start_holds_open`` the requests held right now
    with a client still connected.
``POST /_admin/reset``
    Zero the counters (peaks restart from the current values), disarm every fault,
    restore the launch settings (including the launch-time quirk) and the flaky
    counters. ``{"forget_calls": true}`` also drops every call.
``POST /_admin/forget``
    Drop every call and result now, cancelling running ones, as a restart would;
    held requests are answered at once (a held Check gets ``taskID does not exist``).
``GET|POST /_admin/settings``
    Read or change ``start_hold``, ``check_hold``, ``result_ttl`` and
    ``quirk_empty_message`` while running.
``GET|POST /_admin/faults``
    Read or arm fault switches; a POST merges with the armed ones, ``null`` or
    ``"count": 0`` disarms one. Each switch takes ``count`` (default 1) and
    ``endpoints`` (default ``["start", "check"]``); a request consumes at most one
    switch, tried in this order:

    ``fail_next: {"status": 503, "retry_after": 2, "message": "..."}``
        Answer with that status (400 to 599, default 503), a ``Retry-After`` header if
        given and a JSON body ``{"message": ...}``, without processing the request
        (a Start creates no call).
    ``raw_next: {"body": <any JSON>, "status": 200}``
        Answer with that JSON body, without processing the request.
    ``non_json_next: {"body": "<html>oops</html>", "content_type": "text/html"}``
        Answer 200 with a non-JSON body, without processing the request.
    ``drop_next: {}``
        Process the request (a Start creates its call), then send the headers and
        half the body and close the connection: ``requests`` raises
        ``ChunkedEncodingError``, httpx ``RemoteProtocolError``.
    ``delay_next: {"seconds": 5}``
        Read the request, wait, then process and answer it. The request is
        processed even if the client timed out meanwhile.

    ``{"quirk_empty_message": true}`` in the same body switches the quirk.
    Every faulted request counts in ``start_requests`` / ``check_requests``; only
    processed Starts count in ``starts_taken``.

In tests, :class:`airflow_provider_banana.devserver.testing.DevServer` runs the
server in a subprocess and wraps this API.
"""
