"""Coverage audit: exact hand-computed counts on tiny tokenizers, the recommendation rule, the paper's
facts on real zoo tokenizers, the CLI in-process and the study script."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from xtalign.audit import (
    CORPUS_THRESHOLD,
    AuditReport,
    ClassCount,
    audit_pair,
    numeral_probes,
    probe_tokenizer,
    recommend,
)
from xtalign.cli.main import main
from xtalign.vocab import TokenKind, make_vocab
from xtalign.zoo.tokenizer import GreedyTrieBackend, Tokenizer

PRINTABLE = [bytes([c]) for c in range(32, 127)]  # 95 one-byte tokens, space to tilde
ZH, ZHWEN, SMILE = "中".encode(), "中文".encode(), "😀".encode()


class _DummyPrefix:
    """SentencePiece-like: encodes the text with a phantom leading space."""

    def __init__(self, table: dict[bytes, int]) -> None:
        self.trie = GreedyTrieBackend(table)

    def encode(self, text: str) -> list[int]:
        return self.trie.encode(" " + text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def tiny(name: str, normals: list[bytes], specials: Sequence[tuple[str, str | None]] = (), *,
         byte_tokens: Sequence[bytes] = (), dummy_prefix: bool = False) -> Tokenizer:
    """Specials first (ids 0..), then normal tokens, then byte-fallback tokens; greedy longest-match."""
    tb = [b"" for _ in specials] + list(normals) + list(byte_tokens)
    kinds = ([TokenKind.SPECIAL] * len(specials) + [TokenKind.NORMAL] * len(normals)
             + [TokenKind.BYTE] * len(byte_tokens))
    names = [n for n, _ in specials] + [b.decode("utf-8", errors="replace") for b in tb[len(specials):]]
    roles = {r: i for i, (_, r) in enumerate(specials) if r}
    vocab = make_vocab(name, tb, kinds, names, roles)
    table = {b: i for i, b in enumerate(tb) if b}
    factory = (lambda: _DummyPrefix(table)) if dummy_prefix else (lambda: GreedyTrieBackend(table))
    return Tokenizer(name=name, family="test", source="test", vocab=vocab, backend_factory=factory,
                     dummy_prefix=dummy_prefix)


STUDENT_EXTRA = [b"42", b"07", b"123", b"  ", b"    ", b"\n  ", b"\t\t", b"\n\n", ZH, ZHWEN, SMILE, SMILE + b"!", b"is"]
TEACHER_EXTRA = [b"42", b"123", b"    ", b"\n  ", ZHWEN, SMILE]


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[Tokenizer, Tokenizer]:
    student = tiny("s", PRINTABLE + [b"\t", b"\n"] + STUDENT_EXTRA,
                   [("<s>", "bos"), ("</s>", "eos"), ("<|im_start|>", None)])
    # @, ~ and tab exist in the teacher only as byte-fallback tokens: W maps them one-hot, so they are common
    teacher_chars = [b for b in PRINTABLE if b not in (b"@", b"~")] + [b"\n"]
    teacher = tiny("t", teacher_chars + TEACHER_EXTRA, [("<bos>", "bos"), ("<|im_start|>", None), ("<eot>", None)],
                   byte_tokens=[b"@", b"~", b"\t"])
    return student, teacher


def counts(report: AuditReport) -> dict[str, tuple[int, int]]:
    return {c.key: (c.common, c.total) for c in report.classes}


def test_tiny_pair_hand_computed_counts(tiny_pair) -> None:
    student, teacher = tiny_pair
    report = audit_pair(student, teacher, corpus_text="is 42 @ 中文", corpus_name="c.txt")
    assert counts(report) == {
        "vocab": (103, 110),  # 97 one-char (@ ~ tab via teacher byte tokens) + 42 123 4sp \n2sp 中文 😀
        "corpus.tokens": (6, 7),  # is ␣ 42 ␣ @ ␣ 中文: only "is" is not in the teacher
        "corpus.bytes": (12, 14),
        "numerals.1": (10, 10), "numerals.2": (1, 100), "numerals.3": (1, 1000),  # only 42 and 123
        "numerals.2.nopad": (1, 90), "numerals.3.nopad": (1, 900),
        "numerals.start.1": (10, 10), "numerals.start.2": (1, 100), "numerals.start.3": (1, 1000),
        "punctuation": (32, 32),
        "whitespace.spaces": (2, 16),  # 1 and 4 spaces; "  " is one student token the teacher lacks
        "whitespace.tabs": (1, 8),  # one tab; longer runs are several student tokens
        "whitespace.newlines": (1, 8),
        "whitespace.indent": (1, 3),  # "\n  " is one token; "\n    " is "\n  " + "  "
        "cjk": (1, 2), "emoji": (1, 2),
        "special": (2, 3),  # <s> by role bos, <|im_start|> by name; </s>: teacher has no eos
    }
    assert {c.key: c.aligned for c in report.classes if c.aligned is not None} == {
        "numerals.1": 10,
        "numerals.2": 99,  # all but 07: the teacher writes it 0 7
        "numerals.3": 980,  # not 070-079 (07 x) nor x07 (x 07)
        "numerals.2.nopad": 90, "numerals.3.nopad": 891,  # 107 ... 907
        "numerals.start.1": 10, "numerals.start.2": 99, "numerals.start.3": 980,
        "punctuation": 32,
        "whitespace.spaces": 8,  # 1 4 5 8 9 12 13 16: runs without a student "  " piece
        "whitespace.tabs": 1, "whitespace.newlines": 1, "whitespace.indent": 1,
    }
    assert report.get("punctuation").missing == ()
    assert report.get("numerals.2").missing[:3] == ("00", "01", "02")
    assert report.get("special").missing == ("</s>",)
    assert report.numerals_headline == "10/10 one-digit, 1/100 two-digit, 1/1000 three-digit"
    # numerals are mostly split the same way (99/100, 980/1000) but "is" misses: 6/7 corpus tokens
    loss, reason = report.recommendation
    assert loss == "P-KL" and "85.7% of c.txt tokens" in reason and "99/100 two-digit" in reason
    assert recommend(audit_pair(student, teacher))[0] == "H-KL"  # no corpus: 100/110 of the vocabulary


def test_probes_are_reusable_across_teachers(tiny_pair) -> None:
    student, teacher = tiny_pair
    probes = probe_tokenizer(student, corpus_text="is 42 @ 中文", corpus_name="c.txt")
    assert audit_pair(student, teacher, probes=probes, teacher_probes=probe_tokenizer(teacher)).to_json() == audit_pair(
        student, teacher, corpus_text="is 42 @ 中文", corpus_name="c.txt").to_json()


def test_identity_pair_is_all_common_and_hkl(tiny_pair) -> None:
    student, _ = tiny_pair
    report = audit_pair(student, student, corpus_text="is 42 @ 中文")
    # every probe the student covers with one token is common; the rest stay multi-token
    assert report.get("vocab").share == 1.0 and report.get("corpus.tokens").share == 1.0
    assert report.get("special").share == 1.0 and report.get("punctuation").share == 1.0


def test_dummy_prefix_space_is_skipped_unless_merged() -> None:
    # " 7" exists as a token: the student writes 7 as " 7" both at text start and after a word
    student = tiny("sp", PRINTABLE + [b"\t", b"\n", b" 7", b"42"], dummy_prefix=True)
    teacher = tiny("t", PRINTABLE + [b"\t", b"\n", b"42"])
    c = counts(audit_pair(student, teacher))
    assert c["numerals.1"] == (9, 10) and c["numerals.start.1"] == (9, 10)  # " 7" is not a teacher token
    assert c["numerals.2"] == (1, 100) and c["numerals.start.2"] == (1, 100)  # phantom " " + "42"
    assert audit_pair(student, teacher).get("numerals.1").missing == ("7",)


def test_numeral_probes_denominators() -> None:
    assert len(numeral_probes(1)) == 10 and len(numeral_probes(2)) == 100 and len(numeral_probes(3)) == 1000
    assert numeral_probes(2, padded=False)[0] == "10" and len(numeral_probes(3, padded=False)) == 900
    assert numeral_probes(3)[7] == "007"


def _report(n2: int, n3: int, *, corpus: tuple[int, int] | None = None, vocab: tuple[int, int] = (90, 100),
            aligned: tuple[int, int] | None = None) -> AuditReport:
    a2, a3 = aligned or (None, None)
    classes = [ClassCount("vocab", "v", *vocab), ClassCount("numerals.1", "n1", 10, 10),
               ClassCount("numerals.2", "n2", n2, 100, aligned=a2),
               ClassCount("numerals.3", "n3", n3, 1000, aligned=a3)]
    if corpus is not None:
        classes.append(ClassCount("corpus.tokens", "c", *corpus))
    return AuditReport(student="s", teacher="t", student_fingerprint="a", teacher_fingerprint="b",
                       classes=tuple(classes), corpus="c.txt" if corpus else None)


def test_recommend_rule_branches() -> None:
    assert recommend(_report(49, 1000))[0] == "P-KL"  # 49/100 two-digit is under 50%
    assert recommend(_report(100, 499))[0] == "P-KL"
    assert recommend(_report(50, 500))[0] == "H-KL"  # exactly 50% passes
    loss, reason = recommend(_report(100, 1000, corpus=(80, 100)))
    assert loss == "P-KL" and "80.0% of c.txt tokens" in reason
    hit = round(100 * CORPUS_THRESHOLD)
    loss, reason = recommend(_report(100, 1000, corpus=(hit, 100)))
    assert loss == "H-KL" and "100/100 two-digit, 1000/1000 three-digit" in reason
    loss, reason = recommend(_report(100, 1000, vocab=(40, 100)))
    assert loss == "P-KL" and "no corpus" in reason
    # a digit-splitting student: no numeral is one token, but the teacher splits them the same way
    assert recommend(_report(0, 0, aligned=(100, 1000)))[0] == "H-KL"
    assert recommend(_report(100, 1000, aligned=(100, 0)))[0] == "P-KL"  # the teacher splits 3-digit ones


# --- real zoo tokenizers: the paper's facts -------------------------------------------------------


def test_llama3_student_qwen3_teacher_has_no_common_multidigit_numerals(zoo) -> None:
    report = audit_pair(zoo("llama3"), zoo("qwen3"))
    c = counts(report)
    assert c["numerals.2"] == (0, 100) and c["numerals.3"] == (0, 1000)
    assert c["numerals.2.nopad"] == (0, 90) and c["numerals.3.nopad"] == (0, 900)
    assert c["numerals.start.2"] == (0, 100) and c["numerals.start.3"] == (0, 1000)
    assert c["vocab"] == (109_566, 128_000)  # the brief's llama3 ∩ qwen3
    loss, reason = report.recommendation
    assert loss == "P-KL" and "numerals" in reason and "0/100 two-digit, 0/1000 three-digit" in reason


def test_qwen3_student_llama3_teacher_single_digits_common(zoo) -> None:
    c = counts(audit_pair(zoo("qwen3"), zoo("llama3")))
    assert c["numerals.1"] == (10, 10) and c["numerals.start.1"] == (10, 10)
    assert c["numerals.2"] == (0, 100)  # Qwen writes every digit on its own


def test_qwen3_identity_numerals_are_aligned_not_one_token(zoo) -> None:
    report = audit_pair(zoo("qwen3"), zoo("qwen3"))
    assert (report.get("numerals.2").common, report.get("numerals.2").aligned) == (0, 100)
    assert report.get("numerals.3").aligned == 1000 and report.recommendation[0] == "H-KL"


def test_llama3_identity_is_all_common_hkl(zoo) -> None:
    report = audit_pair(zoo("llama3"), zoo("llama3"), corpus_text="The answer is 42, not 1,337.\n")
    for key in ("vocab", "corpus.tokens", "corpus.bytes", "numerals.1", "numerals.2", "numerals.3",
                "numerals.start.3", "punctuation", "whitespace.spaces", "cjk", "emoji", "special"):
        assert report.get(key).share == 1.0, key
    assert report.recommendation[0] == "H-KL"


def test_llama3_student_gpt_oss_teacher_keeps_numerals(zoo) -> None:
    # o200k groups digits in 1-3 like Llama-3: the offline analogue of the paper's Phi-4-mini teacher
    report = audit_pair(zoo("llama3"), zoo("gpt-oss"))
    assert report.numerals_headline == "10/10 one-digit, 100/100 two-digit, 1000/1000 three-digit"
    assert report.recommendation[0] == "H-KL"


# --- CLI and study ------------------------------------------------------------------------------


def test_cli_json(capsys) -> None:
    assert main(["audit", "--student", "llama3", "--teacher", "qwen3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"]["numerals.2"]["common"] == 0 and out["classes"]["numerals.2"]["total"] == 100
    assert out["classes"]["numerals.3"]["total"] == 1000
    assert out["recommendation"]["loss"] == "P-KL" and "numerals" in out["recommendation"]["reason"]


def test_cli_table_with_corpus(capsys, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("The answer is 42.\n", encoding="utf-8")
    assert main(["audit", "--student", "llama3", "--teacher", "qwen3", "--corpus", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "0/100 two-digit, 0/1000 three-digit" in out and "P-KL" in out and "c.txt tokens" in out


def test_cli_missing_corpus_is_one_line_exit_2(capsys, tmp_path: Path) -> None:
    code = main(["audit", "--student", "llama3", "--teacher", "qwen3", "--corpus", str(tmp_path / "none.txt")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--corpus" in err


def test_study_script_on_two_tokenizers(tmp_path: Path, capsys) -> None:
    from tests.scripts import load_script

    mod = load_script("analysis/audit_pairs.py", "audit_pairs")
    assert mod.main(["--tokenizers", "llama3", "qwen3", "--out", str(tmp_path), "--no-copy"]) == 0
    rows = json.loads((tmp_path / "audit_pairs.json").read_text())["pairs"]
    assert [(r["student"], r["teacher"]) for r in rows] == [("llama3", "qwen3"), ("qwen3", "llama3")]
    assert rows[0]["numerals_2digit"] == "0/100" and rows[0]["loss"] == "P-KL"
    assert (tmp_path / "audit_pairs.csv").read_text().count("\n") == 3
    assert "| llama3 | qwen3 |" in (tmp_path / "audit_pairs.md").read_text()
    assert str(tmp_path) in capsys.readouterr().out
