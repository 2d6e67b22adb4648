"""The modern_en corpus builder, offline: a fake Debian package built here (dpkg-deb) goes
through fetch → convert → dedupe → split → shards → manifest, and jaxlm's data pipeline
reads the result through the preset config's default path. No network: apt-get is faked."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datahelpers import decode_docs, take

from jaxlm.config import load_config
from jaxlm.data.pipeline import build_pipeline

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location(
    "build_corpus", ROOT / "jaxlm/assets/modern_corpus/build_corpus.py")
bc = importlib.util.module_from_spec(_spec)
sys.modules["build_corpus"] = bc  # dataclasses look their module up by name
_spec.loader.exec_module(bc)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

NOUNS = ("kernel driver packet module buffer socket thread process device option server "
         "client file record table index query page user system network").split()
ADJS = "small fast simple stable careful useful common separate".split()
COPYRIGHT = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n" \
            b"Files: *\nCopyright: 2024 Fake Authors\nLicense: MIT\n"
BOILER = "Report a bug in this page if you find one, and thanks for reading it through."


def prose(rng: random.Random, n: int) -> str:
    """``n`` English-looking sentences (distinct with overwhelming probability)."""
    return " ".join(
        f"The {rng.choice(NOUNS)} of the {rng.choice(NOUNS)} is {rng.choice(ADJS)}, and it "
        f"can be used by the {rng.choice(NOUNS)} {rng.randint(0, 10**6)} in this "
        f"{rng.choice(NOUNS)}." for _ in range(n))


def page(body: str) -> str:
    return (f"<html><head><title>t</title><style>p {{}}</style></head><body>"
            f"<div class='sphinxsidebar'><p>Navigation sidebar text with many words in it, "
            f"which should never reach the corpus at all.</p></div>"
            f"<div class='body' role='main'>{body}</div>"
            f"<div class='footer'>Copyright 2024 The Fake Project, all rights reserved.</div>"
            f"</body></html>")


MAN = r""".\" a comment that is not text
.TH FAKE 1 2024 fake
.SH NAME
fake \- frobnicate the \fBwidgets\fR
.SH DESCRIPTION
.B fake
reads every widget in the current directory and frobnicates it, one after the other,
so that the widgets \(em all of them \(em end up in a state that the user can inspect.
.PP
.nf
CODEBLOCK --option=value
.fi
It prints one line per widget, and it stops at the first widget it cannot read, which
is reported on standard error with the name of the widget and the reason for the failure.
.SH EXIT STATUS
It exits with status 0 when every widget was frobnicated, and with status 1 when one of
them could not be read; the widgets that were frobnicated before that one stay as they are.
"""


def make_tree(root: Path, n_pages: int = 24) -> None:
    """A package tree: prose pages (with code, tables, navigation and a boilerplate
    paragraph), an exact copy, a stub, a German page, an excluded file and man pages."""
    rng = random.Random(0)
    html = root / "usr/share/doc/fakedoc/html"
    (html / "_sources").mkdir(parents=True)
    for i in range(n_pages):
        body = (f"<h1>Page {i}</h1><p>{prose(rng, 3)}</p>"
                f"<pre>def secret_code():\n    return {i}</pre>"
                f"<p>{prose(rng, 2)} <code>inline()</code> {prose(rng, 1)}</p>"
                f"<table><tr><td>TABLECELL {i}</td></tr></table><p>{BOILER}</p>")
        (html / f"page{i:02d}.html").write_text(page(body))
    shutil.copy(html / "page00.html", html / "zz-copy.html")
    (html / "stub.html").write_text(page("<p>This page has moved.</p>"))
    (html / "deutsch.html").write_text(page("<p>" + " ".join(
        f"Die Datei {k} wird von dem Programm gelesen und danach im Speicher abgelegt, damit "
        f"der Benutzer sie später wieder findet." for k in range(12)) + "</p>"))
    (html / "genindex.html").write_text(page(f"<p>{prose(rng, 4)}</p>"))
    (html / "_sources/page00.rst.txt").write_text(prose(rng, 5))
    man = root / "usr/share/man/man1"
    man.mkdir(parents=True)
    (man / "fake.1.gz").write_bytes(gzip.compress(MAN.encode()))
    (man / "fakealias.1.gz").write_bytes(gzip.compress(b".so man1/fake.1\n"))
    (root / "usr/share/doc/fakedoc/copyright").write_bytes(COPYRIGHT)


def make_deb(tmp: Path, name: str = "fakedoc", version: str = "1.0-1", tree=make_tree) -> Path:
    root = tmp / f"{name}-root"
    tree(root)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: x <x@x>\n"
        f"Description: fake documentation\n")
    debs = tmp / "debs"
    debs.mkdir(exist_ok=True)
    deb = debs / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


FAKE = bc.Source(("fakedoc",), r"^usr/share/(doc/fakedoc/html/.*\.html|man/man1/[^/]+\.gz)$",
                 "MIT", exclude=bc._SPHINX_SKIP + "|" + bc._NO_INDEX)


def read_split(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for f in sorted((out / split).glob("*.jsonl.gz"))
            for line in gzip.open(f)]


# ----------------------------------------------------------------------------- converters


def test_html_keeps_prose_and_leaves_out_code_tables_and_navigation():
    paras = bc.html_paragraphs(page(
        "<h2>Title<a class='headerlink' href='#t'>\u00b6</a></h2><p>Some   text\n with "
        "<b>bold</b> &amp; <code>code()</code>.</p><pre>x = 1</pre><table><tr><td>cell</td>"
        "</tr></table><nav><p>menu</p></nav><script>var a;</script><p>Last one.</p>"))
    assert paras == ["Title", "Some text with bold & code().", "Last one."]


def test_pod_formatting_codes_and_verbatim_paragraphs():
    pod = ("=head1 NAME\n\nperlfake - a B<fake> page\n\n=head2 Use C<< $a <=> $b >>\n\n"
           "See L<perlfunc/\"sort\"> and L<the docs|perldoc>, I<E<lt>fileE<gt>> E<0x41>E<66>."
           "\n\n    my $code = 1;  # verbatim\n\n=begin html\n\n<p>raw</p>\n\n=end html\n\n"
           "=over\n\n=item * one item\n\n=back\n\n=cut\n\nsub not_pod { }\n")
    assert bc.pod_paragraphs(pod) == [
        "NAME", "perlfake - a fake page", "Use $a <=> $b",
        'See perlfunc "sort" and the docs, <file> AB.', "one item"]


def test_man_page_text_escapes_and_no_fill_blocks():
    paras = bc.man_paragraphs(MAN)
    assert paras[:3] == ["NAME", "fake - frobnicate the widgets", "DESCRIPTION"]
    assert paras[3].startswith("fake reads every widget")
    assert "widgets \u2014 all of them \u2014 end up" in paras[3]
    assert not any("CODEBLOCK" in p or "comment" in p for p in paras)
    assert paras[-3].startswith("It prints one line per widget")
    assert paras[-2:] == ["EXIT STATUS", paras[-1]] and paras[-1].endswith("stay as they are.")
    assert bc.man_paragraphs(".so man1/other.1\n") == []


def test_prose_filters():
    assert bc.is_code("x = f(a[1], b[2]); y = {k: v};")
    assert not bc.is_code("Use the open() function to open a file.")
    assert bc.is_sentence("This is a sentence of more than eight words in all.")
    assert not bc.is_sentence("Heading Without End")
    assert bc.stopword_share(prose(random.Random(1), 5)) > 0.2
    assert bc.stopword_share("Die Datei wird von dem Programm gelesen und danach") < 0.05


def test_shards_are_a_multiple_of_8_and_balanced():
    docs = [bc.Doc("x" * 1000, "p", str(i), hashlib.sha256(str(i).encode()).hexdigest())
            for i in range(100)]
    shards = bc.shard_docs(docs, 6000)
    assert len(shards) == 24 and sum(map(len, shards)) == 100
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert len(bc.shard_docs(docs[:20], 10)) == 16  # more shards than documents wanted
    assert len(bc.shard_docs(docs[:3], 10)) == 3
    keys = [d.key for s in shards for d in s]
    assert keys == sorted(keys)


# ----------------------------------------------------------------------------- builds


@needs_dpkg
def test_build_from_a_fake_deb(tmp_path):
    deb = make_deb(tmp_path)
    out = tmp_path / "corpus"
    logs: list[str] = []
    m = bc.build(out, [FAKE], deb.parent, valid_fraction=0.25, shard_mb=0.002, tokens=True,
                 log=logs.append)
    (src,) = m["sources"]
    assert src["package"] == "fakedoc" and src["version"] == "1.0-1"
    assert src["deb_sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert (out / "licenses/fakedoc.copyright").read_bytes() == COPYRIGHT
    # 24 pages + 1 man page; the copy is a duplicate, the stub and the .so link too short,
    # the German page not (English) prose; genindex and _sources are not read at all.
    assert src["members"] == 24 + 3 + 2
    assert (src["documents"], src["dropped_duplicate"], src["dropped_short"],
            src["dropped_not_prose"]) == (25, 1, 2, 1)

    train, valid = read_split(out, "train"), read_split(out, "validation")
    docs = train + valid
    assert len(docs) == 25 and train and valid
    texts = [d["text"] for d in docs]
    assert len(set(texts)) == 25
    joined = "\n".join(texts)
    for gone in ("secret_code", "TABLECELL", "Navigation", "Copyright 2024", "CODEBLOCK",
                 "Datei", "moved"):
        assert gone not in joined, gone
    assert joined.count(BOILER) == 1  # a paragraph seen before is dropped everywhere
    assert "inline()" in joined and "\n\n" in texts[0] and "  " not in joined
    man = next(d for d in docs if d["path"].endswith("fake.1.gz"))
    assert man["text"].startswith("NAME\n\nfake - frobnicate the widgets\n\nDESCRIPTION")
    for split, items in (("train", train), ("validation", valid)):
        assert all(bc.split_of(hashlib.sha256(d["text"].encode()).hexdigest(), 0.25) == split
                   for d in items)
        info = m["splits"][split]
        assert info["documents"] == len(items) and info["tokens"] > 0
        assert info["bytes"] == sum(len(d["text"].encode()) for d in items)
        for shard in info["shards"]:
            assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() \
                == shard["sha256"]
    assert len(m["splits"]["train"]["shards"]) % 8 == 0
    assert json.loads((out / "manifest.json").read_text())["splits"] == m["splits"]
    assert m["tokenizer"]["file"] == "tokenizer.json"  # the corpus's own BPE, from train/
    from jaxlm.data.tokenizer import load_tokenizer

    own = load_tokenizer(str(out / "tokenizer.json"))
    assert own.decode(own.encode(texts[0]).ids) == texts[0]

    again = bc.build(out, [FAKE], deb.parent, valid_fraction=0.25, shard_mb=0.002,
                     tokens=False, log=logs.append)  # replaces the build, byte for byte
    for split in bc.SPLITS:
        assert [s["sha256"] for s in again["splits"][split]["shards"]] == \
            [s["sha256"] for s in m["splits"][split]["shards"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "debs", "fakedoc-root"]


@needs_dpkg
def test_unfetchable_package_is_one_line_and_skipped(tmp_path, monkeypatch):
    deb = make_deb(tmp_path)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    apt = fake_bin / "apt-get"
    apt.write_text("#!/bin/sh\necho 'E: Unable to locate package nosuchdoc' >&2\nexit 100\n")
    apt.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    missing = bc.Source(("nosuchdoc",), r"x", "MIT")
    logs: list[str] = []
    m = bc.build(tmp_path / "out", [missing, FAKE], deb.parent, tokens=False, log=logs.append)
    line = "cannot fetch nosuchdoc: E: Unable to locate package nosuchdoc; try apt-get update"
    assert f"skipped: {line}" in logs
    assert m["skipped"] == [{"package": "nosuchdoc", "reason": line}]
    assert [s["package"] for s in m["sources"]] == ["fakedoc"]
    with pytest.raises(bc.SourceError, match="cannot fetch nosuchdoc"):
        bc.build(tmp_path / "out2", [missing, FAKE], deb.parent, strict=True, log=logs.append)
    assert not (tmp_path / "out2").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("not a corpus")
    with pytest.raises(bc.SourceError, match="holds no manifest.json"):
        bc.build(tmp_path / "mine", [FAKE], deb.parent, tokens=False, log=logs.append)
    assert (tmp_path / "mine/notes.txt").exists()


@needs_dpkg
def test_preset_config_streams_the_default_build(tmp_path, monkeypatch):
    """configs/pretrain/modern_en.yaml finds a default build through ``~`` (no edits), and
    the eval stream gives back exactly the validation documents."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    out = bc.default_out()
    assert out == tmp_path / "home/.cache/jaxlm/corpora/modern_en"
    deb = make_deb(tmp_path)
    bc.build(out, [FAKE], deb.parent, valid_fraction=0.25, tokens=False, log=lambda _: None)
    assert bc.train_command(out) == "jaxlm train configs/pretrain/modern_en.yaml"
    assert "data.train.0.path=" in bc.train_command(tmp_path / "elsewhere")
    cfg = load_config(ROOT / "configs/pretrain/modern_en.yaml", ["data.seq_len=64"])
    valid = [d["text"] for d in read_split(out, "validation")]
    assert decode_docs(take(build_pipeline(cfg.data, "eval", 4))) == valid
    batch = take(build_pipeline(cfg.data, "train", 4, repeat=False), 1)[0]
    assert batch["inputs"].shape == (4, 64)
    for preset in ("modern_bert", "modern_gpt"):  # the CPU presets read the build's tokenizer
        cfg = load_config(ROOT / f"configs/pretrain/{preset}.yaml", ["train.global_batch=4"])
        assert Path(cfg.data.tokenizer).expanduser() == out / "tokenizer.json"
        batch = take(build_pipeline(cfg.data, "train", 4, repeat=False), 1)[0]
        assert batch["inputs"].shape == (4, cfg.data.seq_len)
        assert int(batch["inputs"].max()) < cfg.model.vocab_size


@needs_dpkg
def test_copyright_from_the_linked_package_and_one_held_out_document(tmp_path):
    """A package whose doc directory links to another package's gets that package's
    copyright file (fetched only for it); a build too small for ``valid_fraction`` still
    holds out one document."""
    make_deb(tmp_path)

    def linked_tree(root: Path) -> None:
        (root / "usr/share/doc").mkdir(parents=True)
        (root / "usr/share/doc/fakelink").symlink_to("fakedoc")
        (root / "usr/share/fakelink").mkdir()
        for i in range(3):
            (root / f"usr/share/fakelink/p{i}.html").write_text(
                page(f"<p>{prose(random.Random(i), 6)}</p>"))

    deb = make_deb(tmp_path, "fakelink", "2.0", tree=linked_tree)
    src = bc.Source(("fakelink",), r"^usr/share/fakelink/.*\.html$", "MIT",
                    copyright_from="fakedoc")
    out = tmp_path / "out"
    m = bc.build(out, [src], deb.parent, valid_fraction=0.0, tokens=False, log=lambda _: None)
    assert m["sources"][0]["copyright_note"] == "from package fakedoc"
    assert (out / "licenses/fakelink.copyright").read_bytes() == COPYRIGHT
    assert (m["splits"]["train"]["documents"], m["splits"]["validation"]["documents"]) == (2, 1)


def test_cli_lists_sources_and_refuses_unknown_packages(capsys):
    assert bc.main(["--list"]) == 0
    assert "linux-doc-6.1" in capsys.readouterr().out
    assert bc.main(["--packages", "nosuchdoc", "--out", "/nonexistent"]) == 2
    assert "not in the source list: nosuchdoc" in capsys.readouterr().err
