"""`eve-ms serve`: an OpenAI-compatible HTTP endpoint (with image input) and a chat page.

Modules, in the order a request passes through them: `app` (FastAPI routes, errors, streaming
as server-sent events), `protocol` (the OpenAI request and response formats), `prompts`
(messages and images to prompt ids, pixels and a GenerationConfig; every bad input a
`BadRequest` naming its field), `engine` (the one worker thread that owns the model and runs
waiting requests as batches), `command` (the command line). `static/chat.html` is the page.
"""
