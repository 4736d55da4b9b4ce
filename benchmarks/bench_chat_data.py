"""The chat data path against the text data path on the same bytes, one worker.

    .venv/bin/python analysis/chat_corpus.py                 # once: out/chat/{train,heldout}.jsonl
    .venv/bin/python benchmarks/bench_chat_data.py           # -> benchmarks/results/bench_chat_data.json

Chat: `ChatBatchBuilder.build` on conversations of out/chat/train.jsonl — render both sides in their own
templates (student SmolLM2's ChatML from its GGUF, teacher Gemma-3 in the Gemma turn format), locate every
message's spans, encode with the markers as specials, align per content, pair the ends of turn, build the
loss masks, collate. Text: `BatchBuilder.build` on the student's renderings of the same conversations as
plain text (the same bytes; tokenize both sides, cut by text, align, collate). Both in one thread with the
row caches off, alternating, ≥ 3 repeats; student tokens per second (median and spread) and the ratio of
medians (target: chat ≥ 0.70 of text).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import begin, parser, ratio, spread, write_results  # noqa: E402

from xtalign.chat import ChatSide, load_template, read_conversations, template_for_tokenizer  # noqa: E402
from xtalign.distill.data.builder import BatchBuilder  # noqa: E402
from xtalign.distill.data.chat import ChatBatchBuilder  # noqa: E402
from xtalign.zoo import load_tokenizer  # noqa: E402


def _chat_builder(seq_len: int) -> ChatBatchBuilder:
    student = ChatSide(load_tokenizer("smollm2"), template_for_tokenizer("smollm2"), add_bos=True)
    teacher = ChatSide(load_tokenizer("gemma3"), load_template("google-gemma-2-2b-it"), add_bos=True)
    return ChatBatchBuilder(student, [teacher], ["gemma3"], seq_len=seq_len, train_on="assistant",
                            now=datetime(2026, 1, 1), cache_size=0)


def _time(build: Callable[[int, np.ndarray, Sequence[Any]], Any], items: Sequence[Any], batch: int) -> tuple[float,
                                                                                                           int]:
    """Seconds and student tokens to build every batch of `items`."""
    t0, tokens = time.perf_counter(), 0
    for k in range(0, len(items) - batch + 1, batch):
        b = build(k, np.arange(k, k + batch), items[k: k + batch])
        tokens += b.student_tokens
    return time.perf_counter() - t0, tokens


def main(argv: list[str] | None = None) -> int:
    p = parser("bench_chat_data", __doc__)
    p.add_argument("--data", type=Path, default=ROOT / "out" / "chat" / "train.jsonl")
    p.add_argument("--conversations", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not args.data.is_file():
        print(f"bench_chat_data: no {args.data}; build it with `.venv/bin/python analysis/chat_corpus.py`",
              file=sys.stderr)
        return 2
    prov = begin(args, "bench_chat_data")
    n = 16 if args.smoke else args.conversations
    convs, _ = read_conversations(args.data, strict=True, limit=n)
    chat = _chat_builder(args.seq_len)
    texts = [chat.align(c)[1][0].student.text for c in convs]  # the student's renderings: the same bytes
    text = BatchBuilder(chat.student.tokenizer, [chat.teachers[0].tokenizer], seq_len=args.seq_len, add_bos=False,
                        cache_size=0)
    _time(chat.build, convs[: args.batch_size], args.batch_size)  # warm the tokenizers and templates
    _time(text.build, texts[: args.batch_size], args.batch_size)
    runs: dict[str, list[float]] = {"chat": [], "text": []}
    tokens: dict[str, int] = {}
    for _ in range(1 if args.smoke else args.repeats):
        for name, build, items in (("chat", chat.build, convs), ("text", text.build, texts)):
            seconds, tokens[name] = _time(build, items, args.batch_size)
            runs[name].append(tokens[name] / seconds)
    body = {"conversations": len(convs), "bytes": sum(len(t.encode()) for t in texts), "batch_size": args.batch_size,
            "seq_len": args.seq_len, "student_tokens": tokens,
            "tokens_per_s": {k: spread(v) for k, v in runs.items()},
            "chat_over_text": ratio(spread(runs["chat"]), spread(runs["text"])), "target": 0.70,
            "sides": {"student": "smollm2 (ChatML, its GGUF's template)", "teacher": "gemma3 (google-gemma-2-2b-it)"}}
    path = write_results(args, "bench_chat_data", prov, body)
    c, t = body["tokens_per_s"]["chat"]["median"], body["tokens_per_s"]["text"]["median"]
    print(f"chat data path {c:,.0f} student tokens/s, text path on the same bytes {t:,.0f} (median of "
          f"{len(runs['chat'])}); chat / text {body['chat_over_text']:.2f} (target >= 0.70) -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
