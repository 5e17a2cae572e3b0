"""vLLM's end-of-generation ids, read from the server (engines/remote/vllm.py `_eos`).

No vLLM runs here (`make test-vllm` has the real server), so these tests answer vLLM's tokenizer
endpoints (`/v1/models`, `/tokenize` in both forms, `/detokenize`, `/tokenizer_info`) the way
vLLM computes them: with the Hugging Face tokenizer of the model (SmolLM2's, from its GGUF) and
its chat template.
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from decision_retry import catalogue
from decision_retry.engines.remote.http import Http
from decision_retry.engines.remote.vllm import VllmServer
from tests.helpers import JsonHandler

PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no end marker


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    gguf = catalogue.resolve("smollm2-135m")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def serve(tokenizer, *, info: bool, template: str | None = None):
    """A loopback server with vLLM's tokenizer endpoints; `info`: --enable-tokenizer-info-endpoint."""

    class Handler(JsonHandler):

        def do_GET(self):
            if self.path == "/v1/models":
                self.reply(200, {"data": [{"id": "smollm2"}]})
            elif self.path == "/tokenizer_info" and info:
                self.reply(200, {"tokenizer_class": type(tokenizer).__name__,
                                 "eos_token": tokenizer.eos_token})
            else:
                self.reply(404, {"error": {"message": "Not Found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize" and "messages" in body:
                ids = tokenizer.apply_chat_template(
                    body["messages"], add_generation_prompt=body.get("add_generation_prompt", True),
                    chat_template=template, tokenize=True, return_dict=False)
                self.reply(200, {"tokens": list(ids)})
            elif self.path == "/tokenize":
                ids = tokenizer.encode(body["prompt"],
                                       add_special_tokens=body.get("add_special_tokens", True))
                self.reply(200, {"tokens": ids})
            elif self.path == "/detokenize":
                self.reply(200, {"prompt": tokenizer.decode(body["tokens"])})
            else:
                self.reply(404, {"error": {"message": "Not Found"}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def dialect(tokenizer, request):
    info, template = request.param
    server = serve(tokenizer, info=info, template=template)
    http = Http(f"http://127.0.0.1:{server.server_address[1]}", timeout=10, retries=0)
    yield VllmServer(http, vocab=49152)
    http.close()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("dialect", [(True, None), (False, None)], indirect=True,
                         ids=["tokenizer-info", "template-only"])
def test_eos_is_the_tokenizers_end_of_turn_marker(dialect, tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"  # SmolLM2's chat template ends a turn with it
    info = dialect.info()
    assert info.eos_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>")}


@pytest.mark.parametrize("dialect", [(True, PLAIN_TEMPLATE)], indirect=True)
def test_the_info_endpoint_alone_names_eos_when_the_template_writes_no_marker(dialect, tokenizer):
    assert dialect.info().eos_ids == {tokenizer.eos_token_id}


@pytest.mark.parametrize("dialect", [(False, PLAIN_TEMPLATE)], indirect=True)
def test_no_marker_and_no_info_gives_no_ids_rather_than_a_text_token(dialect):
    assert dialect.info().eos_ids == frozenset()  # the newline after the reply is not an eos


def test_a_vllm_engine_connected_through_the_spec_names_itself_vllm(tokenizer):
    from decision_retry.engines.remote import connect
    from decision_retry.otel.attributes import engine_provider

    server = serve(tokenizer, info=False)
    try:
        engine = connect(f"vllm+http://127.0.0.1:{server.server_address[1]}/smollm2?vocab=49152")
        assert engine.eos_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
        assert engine_provider(engine) == "vllm"
        engine.http.close()
    finally:
        server.shutdown()
        server.server_close()
