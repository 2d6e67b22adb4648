#!/usr/bin/env python3
"""Build ``modern_en``: a modern-English pretraining corpus from Debian documentation packages.

The Hugging Face hub cannot be reached from every machine jaxlm runs on, but a Debian (or
Ubuntu) package mirror usually can. Debian ``main`` ships a lot of freely licensed,
carefully edited modern English prose as documentation: the Linux kernel, Python,
PostgreSQL, Perl, Rust, Git, Django and SQLite manuals, the Debian handbooks, man pages.
This script turns those packages into tens of MB of clean text, with a held-out split, in
a couple of minutes, and writes it outside the repository (it is far too large to commit)::

    python jaxlm/assets/modern_corpus/build_corpus.py             # ~/.cache/jaxlm/corpora/modern_en
    python jaxlm/assets/modern_corpus/build_corpus.py --quick     # two small packages, seconds
    jaxlm train configs/pretrain/modern_en.yaml

Steps, each deterministic (the same package versions give byte-identical shards):

1. **Fetch** every package of :data:`SOURCES` with ``apt-get download`` (no root needed;
   a ``.deb`` already in ``--debs DIR`` is reused, so a rebuild can be fully offline). A
   package that cannot be fetched is reported in one line and skipped, the build goes on
   with the others (``--strict`` stops instead); the manifest lists what was skipped.
2. **Read** each ``.deb`` as a stream (``dpkg-deb --fsys-tarfile``: nothing is unpacked
   to disk) and convert the members its source selects to plain text, by kind: HTML
   (stdlib ``html.parser``; code blocks, tables, navigation, sidebars and footers left
   out), POD (Perl's documentation; verbatim code paragraphs left out), roff man pages
   (``.nf``/``.EX`` examples and ``.TS`` tables left out) and plain text.
3. **Clean**: whitespace normalised (one paragraph per line, a blank line between
   paragraphs), paragraphs that look like code dropped, and every paragraph of 25 or more
   characters that has already appeared anywhere earlier in the corpus dropped. That last
   rule removes boilerplate (licence notices, "Report a bug") and also the second copy of
   a manual shipped both as one page and as chapters; a document left with nothing new is
   dropped as a duplicate. Documents shorter than :data:`MIN_DOC_CHARS`, with less than
   :data:`MIN_PROSE_SHARE` of their text in sentences (reference tables, symbol lists) or
   with fewer than :data:`MIN_STOPWORD_SHARE` of their words English function words
   (pages left in another language, code listings) are dropped as not prose.
4. **Split** by a hash of the document's text: ``--valid-fraction`` (1.5 %) of documents go
   to ``validation``, the rest to ``train``; the same document always lands on the same side
   (a build too small for that share still holds out its lowest-hash document).
5. **Write** gzipped JSON Lines shards (one ``{"text", "source", "path"}`` record per
   document, documents of all packages mixed in hash order) of about ``--shard-mb`` MB of
   text each, a number of shards per split that is a multiple of 8 (so 1, 2, 4 or 8
   processes each read whole files), each package's Debian ``copyright`` file under
   ``licenses/``, and ``manifest.json`` (packages, versions, ``.deb`` and shard sha256,
   counts). The previous build in ``--out`` is replaced only once the new one is complete.
6. **Tokenizer**: a byte-level BPE of ``--vocab-size`` (8,192) tokens trained on the train
   split (``jaxlm tokenizer train``'s trainer, about 15 s) into ``tokenizer.json``, which the
   modern_en presets (``configs/pretrain/modern_bert.yaml``, ``modern_gpt.yaml``) read: it
   spends 3.8 bytes of this text per token where the embedded Shakespeare one spends 2.5.

JSON Lines rather than ``.txt``: jaxlm reads a ``.txt`` file as one document (or one per
blank-line block or line), so many documents in one shard need a record per document to
keep their boundaries (an end-of-text token between documents, none inside one).

Needs the Python standard library, ``apt-get`` and ``dpkg-deb``, and jaxlm for step 6
(``--vocab-size 0`` skips it); token counts use the ``tokenizers`` package and jaxlm's
embedded tokenizer when they can be imported (``--no-tokens`` skips them). Licences: see
``PROVENANCE.md`` next to this script.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One Debian package and the members of it that hold prose.

    ``packages`` are alternative names, the first one apt knows is used (Ubuntu and later
    Debian releases rename versioned packages such as ``python3.11-doc``). ``include`` /
    ``exclude`` are regexes searched in member paths (without the leading ``./``).
    ``license`` is a short summary for the manifest; ``PROVENANCE.md`` has the details and
    the package's own ``copyright`` file is copied next to the corpus. ``copyright_from``
    names the package holding the copyright file when this one's doc directory is a link.
    """

    packages: tuple[str, ...]
    include: str
    license: str
    exclude: str | None = None
    copyright_from: str | None = None


_NO_INDEX = r"(^|/)(genindex[^/]*|py-modindex|search|searchindex|404|print|toc)\.html$"
_SPHINX_SKIP = r"/(_sources|_static|_modules|_images|_downloads)/"

SOURCES: tuple[Source, ...] = (
    Source(("linux-doc-6.1", "linux-doc"), r"^usr/share/doc/linux-doc[^/]*/html/.*\.html$",
           "GPL-2.0 (kernel documentation; some files GPL-2.0+/LGPL/BSD/MIT)",
           exclude=_SPHINX_SKIP + r"|/translations/|" + _NO_INDEX
           + r"|/process/maintainers\.html$|/abi-[a-z]+\.html$"),
    Source(("python3.11-doc", "python3.12-doc", "python3.13-doc", "python3-doc"),
           r"^usr/share/doc/python3[.\d]*/html/.*\.html$", "PSF-2.0 (Python documentation)",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX
           + r"|/whatsnew/changelog\.html$"
           r"|/(about|bugs|copyright|license|download|contents)\.html$"),
    Source(("postgresql-doc-15", "postgresql-doc-16", "postgresql-doc-17", "postgresql-doc"),
           r"^usr/share/doc/postgresql-doc[^/]*/html/.*\.html$", "PostgreSQL (BSD-like)",
           exclude=r"/bookindex\.html$"),
    Source(("perl-doc",), r"^usr/share/perl/[\d.]+/pod/.*\.pod$", "GPL-1.0+ or Artistic-1.0",
           exclude=r"/perltoc\.pod$"),
    Source(("rust-doc",), r"^usr/share/doc/rust-doc/html/(book|reference|nomicon|rust-by-example|"
           r"embedded-book|edition-guide|rustc|rustdoc|cargo)/.*\.html$",
           "MIT or Apache-2.0", exclude=_NO_INDEX),
    Source(("python-django-doc",), r"^usr/share/doc/python-django-doc/html/.*\.html$",
           "BSD-3-Clause", exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("sqlite3-doc",), r"^usr/share/doc/sqlite3/.*\.html$", "public domain",
           exclude=r"/syntax/|/(sitemap|keyword_index|toc|fileio)\.html$"),
    Source(("debian-handbook",), r"^usr/share/doc/debian-handbook/html/en-US/.*\.html$",
           "GPL-2.0+ or CC-BY-SA-3.0"),
    Source(("debian-reference-en",), r"^usr/share/debian-reference/.*\.en\.html$", "GPL-2.0+"),
    Source(("debian-policy",), r"^usr/share/doc/debian-policy/.*\.html$",
           "GPL-2.0+ (FHS: its own permissive licence)",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("developers-reference",), r"^usr/share/developers-reference/[^/]*\.html$", "GPL-2.0",
           exclude=_NO_INDEX),
    Source(("debian-faq",), r"^usr/share/doc/debian/FAQ/.*\.en\.html$",
           "verbatim and modified copies permitted (GNU-manual style licence)"),
    Source(("maint-guide",), r"^usr/share/doc/maint-guide/html/.*\.en\.html$", "GPL-2.0+ or MIT"),
    Source(("debmake-doc",), r"^usr/share/doc/debmake-doc/html/.*\.en\.html$", "MIT (Expat)"),
    Source(("harden-doc",), r"^usr/share/doc/harden-doc/html/en-US/.*\.html$", "GPL-2.0"),
    Source(("debian-history",), r"^usr/share/doc/debian-history/docs/.*\.en\.html$", "GPL-2.0+"),
    Source(("git-doc",), r"^usr/share/doc/git-doc/.*\.html$", "GPL-2.0"),
    Source(("apache2-doc",), r"^usr/share/doc/apache2-doc/manual/en/.*\.html$", "Apache-2.0",
           exclude=r"/(sitemap|glossary)\.html$"),
    Source(("cmake-doc",), r"^usr/share/doc/cmake-data/html/.*\.html$", "BSD-3-Clause",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX, copyright_from="cmake-data"),
    Source(("sphinx-doc",), r"^usr/share/doc/sphinx-doc/html/.*\.html$", "BSD-2-Clause",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("nodejs-doc",), r"^usr/share/doc/nodejs/api/.*\.html$", "MIT (Expat)",
           exclude=r"/all\.html$"),
    Source(("wireshark-doc",), r"^usr/share/doc/wireshark/ws[ud]g_html_chunked/.*\.html$",
           "GPL-2.0+"),
    Source(("octave-doc",), r"^usr/share/doc/octave/octave\.html/.*\.html$", "GPL-3.0+"),
    Source(("zsh-doc",), r"^usr/share/doc/zsh-common/html/.*\.html$", "MIT-like (zsh licence)",
           copyright_from="zsh-common"),
    Source(("bash-doc",), r"^usr/share/doc/bash/bashref\.html$",
           "GFDL-1.3+ (Bash Reference Manual; no invariant sections)"),
    Source(("gnu-standards",), r"^usr/share/doc/gnu-standards/.*\.html$",
           "GFDL-1.3+ (no invariant sections)"),
    Source(("installation-guide-amd64",),
           r"^usr/share/doc/installation-guide-amd64/en/.*\.html$", "GPL-2.0"),
    Source(("exim4-doc-html",), r"^usr/share/doc/exim4-doc-html/spec_html/.*\.html$",
           "GPL-2.0+"),
    Source(("postfix-doc",), r"^usr/share/doc/postfix/html/.*\.html$", "IPL-1.0 or EPL-2.0"),
    Source(("bind9-doc",), r"^usr/share/doc/bind9-doc/arm/.*\.html$", "MPL-2.0",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("llvm-15-doc", "llvm-16-doc", "llvm-17-doc", "llvm-18-doc", "llvm-19-doc"),
           r"^usr/share/doc/llvm-\d+-doc/html/.*\.html$", "Apache-2.0 WITH LLVM-exception",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX + r"|/AMDGPU/"),
    Source(("clang-15-doc", "clang-16-doc", "clang-17-doc", "clang-18-doc", "clang-19-doc"),
           r"^usr/share/doc/clang-\d+/html/.*\.html$", "Apache-2.0 WITH LLVM-exception",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("ghc-doc",), r"^usr/share/doc/ghc-doc/html/(users_guide|haddock)/.*\.html$",
           "BSD-3-Clause (GHC licence)", exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("erlang-doc",), r"^usr/share/doc/erlang-doc/.*\.html$", "Apache-2.0",
           exclude=r"/lib/wx-|/(index|search|man_index|release_notes)\.html$"),
    Source(("python-sqlalchemy-doc",), r"^usr/share/doc/python-sqlalchemy-doc/html/.*\.html$",
           "MIT", exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("python-pandas-doc",), r"^usr/share/doc/python-pandas-doc/html/"
           r"(user_guide|getting_started|whatsnew|development)/.*\.html$", "BSD-3-Clause",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("python-scipy-doc",), r"^usr/share/doc/python-scipy-doc/html/.*\.html$",
           "BSD-3-Clause", exclude=_SPHINX_SKIP + "|" + _NO_INDEX + r"|/reference/"),
    Source(("python-sympy-doc",), r"^usr/share/doc/python-sympy-doc/html/.*\.html$",
           "BSD-3-Clause", exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("python-flask-doc",), r"^usr/share/doc/python-flask-doc/html/.*\.html$",
           "BSD-3-Clause", exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("python-werkzeug-doc",), r"^usr/share/doc/python-werkzeug-doc/html/.*\.html$",
           "BSD-3-Clause", exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("python-pytest-doc",), r"^usr/share/doc/python-pytest-doc/html/.*\.html$", "MIT",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("python-celery-doc",), r"^usr/share/doc/python-celery-doc/html/.*\.html$",
           "BSD-3-Clause", exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("python-scrapy-doc",), r"^usr/share/doc/python-scrapy-doc/html/.*\.html$",
           "BSD-3-Clause", exclude=_SPHINX_SKIP + "|" + _NO_INDEX),
    Source(("python-lxml-doc",), r"^usr/share/doc/python-lxml/html/.*\.html$", "BSD-3-Clause",
           exclude=r"/apidoc/"),
    Source(("twisted-doc",), r"^usr/share/doc/twisted-doc/html/.*\.html$", "MIT",
           exclude=_SPHINX_SKIP + "|" + _NO_INDEX + r"|/api/"),
    Source(("scons-doc",), r"^usr/share/doc/scons/HTML/.*\.html$", "MIT"),
    Source(("ffmpeg-doc",), r"^usr/share/doc/ffmpeg/manual/.*\.html$", "LGPL-2.1+ / GPL-2.0+"),
    Source(("imagemagick-6-doc",), r"^usr/share/doc/imagemagick-6-common/html/www/.*\.html$",
           "ImageMagick licence (Apache-2.0 style)", exclude=r"/api/Magick(Core|Wand)/",
           copyright_from="imagemagick-6-common"),
    Source(("kicad-doc-en",), r"^usr/share/doc/kicad/help/en/.*\.html$",
           "GPL-3.0+ or CC-BY-3.0+"),
    Source(("manpages",), r"^usr/share/man/man[1-8]/[^/]+\.[1-8][a-z]*\.gz$",
           "various free licences per page (Linux man-pages project)"),
    Source(("manpages-dev",), r"^usr/share/man/man[23]/[^/]+\.[23][a-z]*\.gz$",
           "various free licences per page (Linux man-pages project)", copyright_from="manpages"),
    Source(("vim-runtime",), r"^usr/share/vim/vim\d+/doc/[^/]+\.txt$",
           "Vim licence (GPL-compatible)"),
)

QUICK = ("debian-faq", "maint-guide")  # two small packages (~1 MB of .deb), for --quick

MIN_DOC_CHARS = 500  # shorter documents (stubs, redirects, one-line pages) are dropped
MIN_PROSE_SHARE = 0.35  # share of a document's characters in sentence paragraphs
MIN_STOPWORD_SHARE = 0.15  # share of its words that are common English function words
MIN_DEDUP_CHARS = 25  # paragraphs this long or longer are kept once in the whole corpus
SHARD_MULTIPLE = 8  # shards per split: a multiple of this (whole files for 1/2/4/8 readers)
SPLITS = ("train", "validation")
TOKENIZER, VOCAB_SIZE = "tokenizer.json", 8192  # the corpus's own BPE, trained on train/


def default_out() -> Path:
    """``$XDG_CACHE_HOME/jaxlm/corpora/modern_en`` (``~/.cache/...`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "jaxlm" / "corpora" / "modern_en"


class SourceError(Exception):
    """A package that cannot be fetched or read (one line, naming the package)."""


# ----------------------------------------------------------------------------- HTML → text

_BLOCK = frozenset(
    "address article aside blockquote body br caption center dd details div dl dt fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 header hr html li main nav ol p section "
    "summary tbody td th thead tr ul title".split()
)
# Elements whose whole content is left out: code, tables, scripts, navigation, maths.
_SKIP = frozenset("script style pre table nav head form button select textarea svg math "
                  "noscript footer header aside object iframe map template".split())
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# class / id / role words of a container that holds navigation, code or boilerplate, not
# running text (Sphinx, Read the Docs, DocBook, mdBook, Apache and Node.js page layouts).
_SKIP_MARKS = frozenset("""
    sphinxsidebar sphinxsidebarwrapper sidebar related footer header navheader navfooter nav
    navbar navigation toc gtoc toctree-wrapper breadcrumb breadcrumbs wy-breadcrumbs wy-nav-side
    wy-nav-top rst-versions rst-footer-buttons menu menu-bar mobile-nav-chapters nav-chapters
    nav-wrapper nav-wide-wrapper search searchbox headerlink highlight linenos copyright sig
    sig-object api_metadata api_stability line-block programlisting screen synopsis cmdsynopsis
    funcsynopsis literallayout example-contents toplang bottomlang quickview page-header
    column2 doc-toc
""".split())
_CONTAINERS = frozenset("html body main article".split())  # never skipped by their marks


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML page as paragraphs, leaving out :data:`_SKIP` content."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buf: list[str] = []
        self._skip_tag: str | None = None  # the tag of the element being left out
        self._depth = 0  # how many elements of that tag are open (they may nest)

    def _flush(self) -> None:
        text = " ".join("".join(self._buf).split())
        if text:
            self.paragraphs.append(text)
        self._buf = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            self._depth += tag == self._skip_tag
            return
        a = dict(attrs)
        marks = {w for k in ("class", "id", "role") for w in (a.get(k) or "").split()}
        if tag in _SKIP or "hidden" in a or (tag not in _CONTAINERS and (
                marks & _SKIP_MARKS or {"contents", "local"} <= marks)):
            if tag not in _VOID:
                self._skip_tag, self._depth = tag, 1
            if tag in _BLOCK:
                self._flush()
            return
        if tag in _BLOCK:
            self._flush()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is None and tag in _BLOCK:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._depth -= 1
                if not self._depth:
                    self._skip_tag = None
            return
        if tag in _BLOCK:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self._buf.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def html_paragraphs(text: str) -> list[str]:
    """The paragraphs of an HTML page's readable text (see :class:`_TextExtractor`)."""
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    # "¶" is Sphinx's heading anchor; a paragraph starting ". " or ", " is the rest of a
    # sentence whose code block (left out) closed the HTML paragraph before it.
    return [_LEADING_PUNCT.sub("", p.replace("\u00b6", "")).strip() for p in parser.paragraphs]


_LEADING_PUNCT = re.compile(r"^[.,;:]\s+")


# ----------------------------------------------------------------------------- POD → text

# E<lt> and E<gt> stand in as private-use characters until the other codes are expanded,
# so that I<E<lt>fileE<gt>> still reads as one code.
_LT, _GT = "\ue000", "\ue001"
_POD_ENTITIES = {"lt": _LT, "gt": _GT, "verbar": "|", "sol": "/"}
_POD_CODE = re.compile(r"([A-Z])<([^<>]*)>")


def _pod_code(m: re.Match[str]) -> str:
    code, body = m.group(1), m.group(2).strip()
    if code == "E":
        if body in _POD_ENTITIES:
            return _POD_ENTITIES[body]
        try:  # E<0x3C> hex, E<074> octal, E<60> decimal
            return chr(int(body, 16 if body.lower().startswith("0x") else
                           8 if body.startswith("0") else 10))
        except ValueError:
            pass
        return html.unescape(f"&{body};")
    if code in "XZ":
        return ""
    if code == "L":  # L<text|target>, L<name/"section">, L<name>
        if "|" in body:
            return body.split("|", 1)[0]
        return body.replace('/"', ' "').strip("/")
    return body


def pod_inline(text: str) -> str:
    """POD formatting codes (``B<..>``, ``C<< .. >>``, ``L<..>``, ``E<gt>``...) → their text."""
    for n in (4, 3, 2):  # C<<< x >>> style: the body may hold < and >
        text = re.sub(r"([A-Z])" + "<" * n + r"\s+(.*?)\s+" + ">" * n,
                      lambda m: _pod_code(m) if m.group(1) != "E" else m.group(0), text,
                      flags=re.S)
    for _ in range(8):  # innermost first
        text, n_subs = _POD_CODE.subn(_pod_code, text)
        if not n_subs:
            break
    return text.replace(_LT, "<").replace(_GT, ">")


def pod_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a POD document: headings, items and ordinary paragraphs;
    verbatim (indented, code) paragraphs and ``=begin``/``=for`` blocks are left out."""
    out: list[str] = []
    in_pod, skip_until = True, None  # a .pod file starts in POD
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        if not block.strip():
            continue
        first = block.lstrip("\n")
        if skip_until:
            if first.startswith(skip_until):
                skip_until = None
            continue
        if first.startswith("="):
            m = re.match(r"(=\w+)\s*(.*)", first, re.S)
            cmd, rest = (m.group(1), m.group(2)) if m else (first, "")
            if cmd == "=cut":
                in_pod = False
            elif cmd == "=pod" or cmd.startswith("=head") or cmd == "=item":
                in_pod = True
                rest = rest.strip()
                if cmd == "=item":
                    rest = re.sub(r"^(\*|\d+\.?)\s*", "", rest)
                if rest:
                    out.append(pod_inline(" ".join(rest.split())))
            elif cmd == "=begin":
                skip_until = "=end"
            continue
        if not in_pod or first[:1] in (" ", "\t"):
            continue  # code outside POD, or a verbatim (code) paragraph
        out.append(pod_inline(" ".join(first.split())))
    return out


# ----------------------------------------------------------------------------- roff → text

_ROFF_GLYPHS = {
    "em": "\u2014", "en": "\u2013", "lq": "\u201c", "rq": "\u201d", "oq": "\u2018",
    "cq": "\u2019", "aq": "'", "dq": '"', "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae",
    "tm": "\u2122", "mu": "\u00d7", "+-": "\u00b1", "<=": "\u2264", ">=": "\u2265",
    "ti": "~", "ha": "^", "rs": "\\", "ga": "`", "hy": "-", "mi": "-", "pl": "+", "eq": "=",
    "->": "\u2192", "<-": "\u2190", "de": "\u00b0", "bv": "|", "or": "|", "sl": "/",
}
_ROFF_ESCAPE = re.compile(
    r"\\(\((..)|\[([^\]]*)\]|\*(\((..)|\[[^\]]*\]|.)|f(\(..|\[[^\]]*\]|.)|s[-+]?\d+|"
    r"[kgnz](\(..|.)|[&|^%:cdu{}]|[ ~0]|e|-|.)")
_FONT_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB"}


def _roff_escape(m: re.Match[str]) -> str:
    s = m.group(1)
    if m.group(2) is not None:
        return _ROFF_GLYPHS.get(m.group(2), "")
    if m.group(3) is not None:
        name = m.group(3)
        if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
            return chr(int(name[1:], 16))
        return _ROFF_GLYPHS.get(name, "")
    if s.startswith("*"):  # predefined strings: \*(lq \*(rq \*R ...
        name = m.group(5) or s[1:].strip("[]")
        return _ROFF_GLYPHS.get(name, "")
    if s in (" ", "~", "0"):
        return " "
    if s == "e":
        return "\\"
    if s == "-":
        return "-"
    return ""


def _roff_args(line: str) -> list[str]:
    """Arguments of a roff request line (double quotes group words, ``""`` is a quote)."""
    return [(q or w).replace('""', '"')
            for q, w in re.findall(r'"((?:[^"]|"")*)"?|(\S+)', line) if q or w]


def man_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a man page (man/mdoc roff): headings and filled text;
    no-fill blocks (``.nf``/``.EX``: synopses, examples), tables (``.TS``), equations and
    macro definitions are left out. A page that is only ``.so`` (a link) gives nothing."""
    out: list[str] = []
    buf: list[str] = []
    skip_until: str | None = None
    lines = text.replace("\r\n", "\n").split("\n")

    def flush() -> None:
        joined = " ".join(" ".join(buf).split())
        if joined:
            out.append(joined)
        buf.clear()

    for raw in lines:
        line = raw.rstrip()
        if skip_until:
            if re.match(r"^[.']\s*" + skip_until + r"\b", line):
                skip_until = None
            continue
        if line.startswith((".\\\"", "'\\\"", "\\\"")) or line in (".", "'"):
            continue
        if line.startswith((".", "'")):
            req, _, rest = line[1:].strip().partition(" ")
            if req in ("nf", "EX"):
                flush()
                skip_until = "fi" if req == "nf" else "EE"
            elif req in ("TS", "EQ", "de", "ig", "PS"):
                flush()
                skip_until = {"TS": "TE", "EQ": "EN", "de": r"\.", "ig": r"\.", "PS": "PE"}[req]
            elif req == "so":
                return []
            elif req in ("SH", "SS", "Sh", "Ss"):
                flush()
                out.append(" ".join(_roff_args(_ROFF_ESCAPE.sub(_roff_escape, rest))))
            elif req in ("PP", "LP", "P", "sp", "br", "RS", "RE", "TP", "HP", "TQ", "Pp", "in",
                         "Bl", "El", "Bd", "Ed", "It"):
                flush()
                if req == "It" and rest:
                    buf.append(_ROFF_ESCAPE.sub(_roff_escape, rest))
            elif req == "IP":
                flush()
                args = _roff_args(_ROFF_ESCAPE.sub(_roff_escape, rest))
                if args and args[0] not in ("\u2022", "*", "-", "o"):
                    out.append(args[0])
            elif req in _FONT_MACROS:
                args = _roff_args(_ROFF_ESCAPE.sub(_roff_escape, rest))
                buf.append(" ".join(args) if req in ("B", "I", "SM", "SB") else "".join(args))
            elif req in ("Nm", "Ar", "Fl", "Xr", "Em", "Sy", "Pa", "Dq", "Ql", "Va", "Ev", "Cm"):
                buf.append(_ROFF_ESCAPE.sub(_roff_escape, rest))
            continue  # any other request (.TH, .ad, .UR ...) carries no running text
        buf.append(_ROFF_ESCAPE.sub(_roff_escape, line))
    flush()
    return out


# ----------------------------------------------------------------------------- plain text


def text_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of a plain-text file (Vim help style markup —
    ``*tag*`` anchors, ``|link|`` bars, ``>``…``<`` example blocks — removed)."""
    out: list[str] = []
    kept: list[str] = []
    in_example = False
    for line in text.replace("\r\n", "\n").split("\n"):
        if in_example:
            if line[:1] not in (" ", "\t") and line.strip():
                in_example = False
                if line.startswith("<"):
                    line = line[1:]
            else:
                continue
        if line.endswith((" >", "\t>")) or line == ">":
            kept.append(line[:-1])
            in_example = True
            continue
        kept.append(line)
    for block in re.split(r"\n\s*\n", "\n".join(kept)):
        if re.fullmatch(r"[\s=~*_#-]*", block):
            continue
        block = re.sub(r"\*[^*\s]+\*", " ", block)
        block = re.sub(r"\|([^|\s]+)\|", r"\1", block)
        joined = " ".join(block.split())
        if joined:
            out.append(joined)
    return out


def member_kind(path: str) -> str | None:
    """How a package member is converted: html, pod, man or text; None if none applies."""
    p = path.lower()
    if re.search(r"\.x?html?(\.gz)?$", p):
        return "html"
    if p.endswith(".pod"):
        return "pod"
    if re.search(r"/man/man\d[^/]*/[^/]+\.\d[a-z]*(\.gz)?$", p):
        return "man"
    if re.search(r"\.txt(\.gz)?$", p):
        return "text"
    return None


_CONVERTERS: dict[str, Callable[[str], list[str]]] = {
    "html": html_paragraphs, "pod": pod_paragraphs, "man": man_paragraphs,
    "text": text_paragraphs,
}


def decode(data: bytes, path: str) -> str:
    """The text of a member: gunzipped if ``.gz``, UTF-8 (else Latin-1), NFC."""
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return unicodedata.normalize("NFC", text)


# ----------------------------------------------------------------------------- prose filters

_CODE_CHARS = frozenset("{}[]();=<>*&|$#\\/_@%^~`")
_SENTENCE_END = re.compile(r"[.!?:;)\"'\u201d\u2019]$")
_WORD = re.compile(r"[A-Za-z][a-z']+")


def is_code(par: str) -> bool:
    """A paragraph that reads as code, a path list or a table row rather than prose."""
    chars = [c for c in par if not c.isspace()]
    if not chars:
        return True
    symbols = sum(c in _CODE_CHARS for c in chars)
    letters = sum(c.isalpha() for c in chars)
    return symbols > 0.12 * len(chars) or letters < 0.5 * len(chars)


def is_sentence(par: str) -> bool:
    """A paragraph that reads as running text: 8+ words, ending like a sentence."""
    return len(_WORD.findall(par)) >= 8 and bool(_SENTENCE_END.search(par))


def clean_paragraphs(paragraphs: Iterable[str]) -> list[str]:
    """Non-empty paragraphs with control characters removed and code-like ones dropped."""
    out = []
    for p in paragraphs:
        p = "".join(c for c in p if c >= " " or c == "\t").strip()
        if p and not is_code(p):
            out.append(p)
    return out


def prose_share(paragraphs: list[str]) -> float:
    """Share of the characters of ``paragraphs`` that are in sentence-like paragraphs."""
    total = sum(len(p) for p in paragraphs)
    return sum(len(p) for p in paragraphs if is_sentence(p)) / total if total else 0.0


_STOPWORDS = frozenset("the of and to a in is that for it as with be on by this are or an not "
                       "can if from which you".split())
_ANY_WORD = re.compile(r"[^\W\d_]+")


def stopword_share(text: str) -> float:
    """Share of the words of ``text`` that are the 24 commonest English function words:
    about 0.3 in English prose, under 0.1 in other languages, code, tables and lists."""
    words = _ANY_WORD.findall(text.lower())
    return sum(w in _STOPWORDS for w in words) / len(words) if words else 0.0


# ----------------------------------------------------------------------------- packages


@dataclass
class Package:
    """A fetched source: the ``.deb``, its name and version, and what was read from it."""

    source: Source
    name: str
    deb: Path
    version: str = ""
    sha256: str = ""
    copyright: bytes | None = None
    copyright_note: str = ""
    docs: list[tuple[str, list[str]]] = field(default_factory=list)  # (member, paragraphs)
    members: int = 0  # members selected and converted


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()
             and not ln.startswith("W: Download is performed unsandboxed")]
    return lines[-1] if lines else "no output"


def resolve_name(src: Source, debs: Path) -> str:
    """Which of ``src.packages`` to use: the first with a ``.deb`` in ``debs``, else the
    first that apt has a candidate version of, else the first."""
    for name in src.packages:
        if any(debs.glob(f"{name}_*.deb")):
            return name
    if len(src.packages) > 1 and shutil.which("apt-cache") is not None:
        for name in src.packages:
            r = _run(["apt-cache", "show", "--no-all-versions", name])
            if r.returncode == 0 and "Filename:" in r.stdout:
                return name
    return src.packages[0]


def fetch(name: str, debs: Path) -> Path:
    """The ``.deb`` of package ``name`` in ``debs``: reused if there, else ``apt-get download``.

    Raises :class:`SourceError` with one line (apt's last message and a hint) on failure.
    """
    have = sorted(debs.glob(f"{name}_*.deb"))
    if have:
        return have[-1]
    if shutil.which("apt-get") is None:
        raise SourceError(f"cannot fetch {name}: apt-get not found (this needs a Debian or "
                          f"Ubuntu host, or --debs DIR holding {name}_*.deb)")
    r = _run(["apt-get", "download", "-q", name], cwd=debs, timeout=600)
    have = sorted(debs.glob(f"{name}_*.deb"))
    if r.returncode != 0 or not have:
        msg = _last_line(r.stderr or r.stdout)
        hint = "; try apt-get update" if re.search(r"40[34]|Unable to locate|no installation "
                                                    r"candidate|Failed to fetch", msg) else ""
        raise SourceError(f"cannot fetch {name}: {msg}{hint}")
    return have[-1]


def deb_files(deb: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """``(path, content)`` of the regular files of ``deb`` whose path (without the leading
    ``./``) ``want`` accepts, in archive order, streamed from ``dpkg-deb --fsys-tarfile``:
    nothing is unpacked to disk. Raises :class:`SourceError` on a ``.deb`` it cannot read."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    done = False
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                path = member.name.removeprefix("./")
                if member.isfile() and want(path):
                    yield path, tar.extractfile(member).read()  # type: ignore[union-attr]
        done = True
    except (tarfile.TarError, OSError) as e:
        raise SourceError(f"cannot read {deb.name}: {e}") from None
    finally:
        if not done:  # an error, or the caller stopped early: the rest is not wanted
            proc.kill()
        _, err = proc.communicate()  # (drains the archive's padding after its last member)
    if proc.returncode != 0:
        raise SourceError(f"cannot read {deb.name}: {_last_line(err.decode(errors='replace'))}")


def fetch_all(names: list[str], debs: Path) -> None:
    """Download the ``.deb`` files of ``names`` missing from ``debs`` in one ``apt-get``
    call (one call per package costs about a second of apt start-up each). Failures are
    left to :func:`fetch`, which then tries each missing package alone and names why."""
    missing = [n for n in names if not any(debs.glob(f"{n}_*.deb"))]
    if len(missing) > 1 and shutil.which("apt-get") is not None:
        _run(["apt-get", "download", "-q", *missing], cwd=debs, timeout=1800)


def read_package(pkg: Package) -> Package:
    """Convert every member of ``pkg.deb`` that its source selects.

    Fills ``version``, ``sha256``, ``copyright`` (the package's own Debian copyright file)
    and ``docs`` (the cleaned paragraphs of each member, possibly none). Raises
    :class:`SourceError` on a ``.deb`` that dpkg-deb cannot read.
    """
    src = pkg.source
    pkg.sha256 = hashlib.sha256(pkg.deb.read_bytes()).hexdigest()
    info = _run(["dpkg-deb", "-f", str(pkg.deb), "Package", "Version"])
    if info.returncode != 0:
        raise SourceError(f"cannot read {pkg.deb.name}: {_last_line(info.stderr)}")
    fields = dict(ln.split(": ", 1) for ln in info.stdout.strip().splitlines() if ": " in ln)
    pkg.version = fields.get("Version", "")
    copyright_path = f"usr/share/doc/{fields.get('Package', pkg.name)}/copyright"
    inc, exc = re.compile(src.include), re.compile(src.exclude) if src.exclude else None

    def want(path: str) -> bool:
        return path == copyright_path or (
            bool(inc.search(path)) and not (exc and exc.search(path))
            and member_kind(path) is not None)

    for path, data in deb_files(pkg.deb, want):
        if path == copyright_path:
            pkg.copyright = data
            continue
        pkg.members += 1
        kind = member_kind(path)
        assert kind is not None
        pkg.docs.append((path, clean_paragraphs(_CONVERTERS[kind](decode(data, path)))))
    return pkg


def read_copyright(name: str, debs: Path) -> bytes | None:
    """Only the Debian copyright file of package ``name`` (fetched if need be): for a
    source whose ``/usr/share/doc/<package>`` is a link to another package's directory."""
    wanted = f"usr/share/doc/{name}/copyright"
    for _, data in deb_files(fetch(name, debs), lambda path: path == wanted):
        return data
    return None


# ----------------------------------------------------------------------------- corpus


@dataclass
class Doc:
    text: str
    source: str
    path: str
    key: str  # sha256 of the text: the split and the shard order


def dedupe_and_filter(packages: list[Package], stats: dict[str, dict[str, int]]
                      ) -> list[Doc]:
    """Documents of all packages in source order, with every paragraph of at least
    :data:`MIN_DEDUP_CHARS` characters kept only at its first appearance, and the
    documents too short or not prose enough dropped (counted in ``stats``)."""
    seen: set[bytes] = set()
    docs: list[Doc] = []
    for pkg in packages:
        s = stats.setdefault(pkg.name, {})
        for key in ("members", "documents", "bytes", "dropped_short", "dropped_not_prose",
                    "dropped_duplicate", "paragraphs_deduplicated"):
            s.setdefault(key, 0)
        s["members"] = pkg.members
        for path, paras in pkg.docs:
            kept, new, old = [], 0, 0
            for p in paras:
                if len(p) >= MIN_DEDUP_CHARS:
                    h = hashlib.blake2b(" ".join(p.lower().split()).encode(),
                                        digest_size=12).digest()
                    if h in seen:
                        old += 1
                        continue
                    seen.add(h)
                    new += 1
                kept.append(p)
            s["paragraphs_deduplicated"] += old
            text = "\n\n".join(kept)
            if old and not new:
                s["dropped_duplicate"] += 1
            elif len(text) < MIN_DOC_CHARS:
                s["dropped_short"] += 1
            elif prose_share(kept) < MIN_PROSE_SHARE or stopword_share(text) < MIN_STOPWORD_SHARE:
                s["dropped_not_prose"] += 1
            else:
                key = hashlib.sha256(text.encode()).hexdigest()
                docs.append(Doc(text, pkg.name, path, key))
                s["documents"] += 1
                s["bytes"] += len(text.encode())
    return docs


def split_of(key: str, valid_fraction: float) -> str:
    """``validation`` for a ``valid_fraction`` share of hash keys, else ``train``."""
    return "validation" if int(key[:15], 16) / 16**15 < valid_fraction else "train"


def shard_docs(docs: list[Doc], shard_bytes: int, multiple: int = SHARD_MULTIPLE
               ) -> list[list[Doc]]:
    """Docs in key order cut into a multiple of ``multiple`` shards of about ``shard_bytes``
    of text each (fewer when there are fewer documents than that)."""
    docs = sorted(docs, key=lambda d: d.key)
    total = sum(len(d.text.encode()) for d in docs)
    n = -(-max(1, -(-total // max(1, shard_bytes))) // multiple) * multiple
    if n > len(docs):  # a multiple of `multiple` still, unless there are fewer documents
        n = len(docs) // multiple * multiple or len(docs)
    shards: list[list[Doc]] = [[] for _ in range(n)]
    done, i = 0, 0
    for d in docs:
        # shard i takes documents until it reaches its share of the total
        while i < n - 1 and done >= total * (i + 1) / n and shards[i]:
            i += 1
        shards[i].append(d)
        done += len(d.text.encode())
    return [s for s in shards if s]


def write_shard(path: Path, docs: list[Doc]) -> str:
    """Write ``docs`` as gzipped JSON Lines (byte-identical on every run); its sha256."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        for d in docs:
            line = json.dumps({"text": d.text, "source": d.source, "path": d.path},
                              ensure_ascii=False)
            gz.write(line.encode() + b"\n")
    data = buf.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def count_tokens(texts: Iterator[str]) -> int | None:
    """Tokens of ``texts`` with jaxlm's embedded tokenizer (None if it cannot be loaded)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    path = Path(__file__).resolve().parent.parent / "tokenizer.json"
    if not path.exists():
        return None
    tok = Tokenizer.from_file(str(path))
    total, batch = 0, []
    for t in texts:
        batch.append(t)
        if len(batch) == 256:
            total += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        total += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
    return total


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished build ``new`` to ``out``, replacing an earlier build there."""
    if out.exists():
        if not (out / "manifest.json").exists() and any(out.iterdir()):
            raise SourceError(f"--out {out} exists, is not empty and holds no manifest.json "
                              "of an earlier build; choose another directory")
        old = out.with_name(out.name + f".old-{os.getpid()}")
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old)
    else:
        new.rename(out)


# ----------------------------------------------------------------------------- main


def _read_one(args: tuple[Source, str, Path]) -> Package | str:
    src, name, deb = args
    try:
        return read_package(Package(src, name, deb))
    except SourceError as e:
        return str(e)


def build(out: Path, sources: list[Source], debs: Path, valid_fraction: float = 0.015,
          shard_mb: float = 4.0, jobs: int = 1, strict: bool = False, tokens: bool = True,
          vocab_size: int = VOCAB_SIZE,
          log: Callable[[str], None] = print) -> dict:
    """Build the corpus into ``out`` (see the module docstring); the manifest as a dict.

    A package that cannot be fetched or read is logged in one line and skipped (``strict``:
    :class:`SourceError` is raised instead). Raises :class:`SourceError` when nothing is left.
    """
    t0 = time.time()
    skipped: list[dict[str, str]] = []
    todo: list[tuple[Source, str, Path]] = []
    names = [resolve_name(src, debs) for src in sources]
    fetch_all(names, debs)
    for src, name in zip(sources, names, strict=True):
        try:
            todo.append((src, name, fetch(name, debs)))
        except SourceError as e:
            if strict:
                raise
            log(f"skipped: {e}")
            skipped.append({"package": name, "reason": str(e)})
    t_fetch = time.time() - t0
    log(f"fetched {len(todo)} package(s) in {t_fetch:.1f}s; converting "
        f"({jobs} process{'es' if jobs > 1 else ''})")
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            results = list(ex.map(_read_one, todo))
    else:
        results = [_read_one(t) for t in todo]
    packages: list[Package] = []
    for (_, name, _), res in zip(todo, results, strict=True):
        if isinstance(res, str):
            if strict:
                raise SourceError(res)
            log(f"skipped: {res}")
            skipped.append({"package": name, "reason": res})
        else:
            packages.append(res)
    for pkg in packages:  # packages whose doc directory is a link to another package's
        if pkg.copyright is None and pkg.source.copyright_from:
            other = next((p for p in packages if p.name == pkg.source.copyright_from), None)
            try:
                pkg.copyright = other.copyright if other else read_copyright(
                    pkg.source.copyright_from, debs)
            except SourceError as e:
                log(f"warning: {e} (for the copyright file of {pkg.name})")
            pkg.copyright_note = f"from package {pkg.source.copyright_from}"
    if not packages:
        raise SourceError("no package could be fetched or read; nothing to build")
    stats: dict[str, dict[str, int]] = {}
    docs = dedupe_and_filter(packages, stats)
    if not docs:
        raise SourceError("no document passed the prose filters; nothing to build")
    by_split: dict[str, list[Doc]] = {s: [] for s in SPLITS}
    for d in docs:
        by_split[split_of(d.key, valid_fraction)].append(d)
    if not by_split["validation"] and len(docs) > 1:  # a small build: hold out the lowest key
        first = min(by_split["train"], key=lambda d: d.key)
        by_split["train"].remove(first)
        by_split["validation"].append(first)

    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=out.name + ".new-", dir=out.parent))
    try:
        splits: dict[str, dict] = {}
        for split, items in by_split.items():
            (new / split).mkdir()
            shards = shard_docs(items, int(shard_mb * 1e6)) if items else []
            files = []
            for i, shard in enumerate(shards):
                name = f"{split}-{i:05d}-of-{len(shards):05d}.jsonl.gz"
                sha = write_shard(new / split / name, shard)
                files.append({"file": f"{split}/{name}", "documents": len(shard),
                              "bytes": sum(len(d.text.encode()) for d in shard),
                              "sha256": sha})
            n_tok = count_tokens(d.text for d in items) if tokens and items else None
            splits[split] = {"documents": len(items),
                             "bytes": sum(f["bytes"] for f in files), "tokens": n_tok,
                             "shards": files}
        if vocab_size and by_split["train"]:  # the corpus's own BPE (what its presets read)
            from jaxlm.data.tokenizer import train_tokenizer

            train_tokenizer(sorted(str(p) for p in (new / "train").glob("*.jsonl.gz")),
                            vocab_size, str(new / TOKENIZER), show_progress=False)
        (new / "licenses").mkdir()
        for pkg in packages:
            if pkg.copyright:
                (new / "licenses" / f"{pkg.name}.copyright").write_bytes(pkg.copyright)
        manifest = {
            "name": "modern_en",
            "builder": "jaxlm/assets/modern_corpus/build_corpus.py",
            "format": "gzipped JSON Lines, one {text, source, path} record per document",
            "valid_fraction": valid_fraction,
            "tokens_counted_with": "jaxlm/assets/tokenizer.json" if tokens else None,
            "tokenizer": ({"file": TOKENIZER, "vocab_size": vocab_size, "trained_on": "train"}
                          if vocab_size and by_split["train"] else None),
            "splits": splits,
            "sources": [{
                "package": p.name, "version": p.version, "deb": p.deb.name,
                "deb_sha256": p.sha256, "license": p.source.license,
                "copyright_file": f"licenses/{p.name}.copyright" if p.copyright else None,
                "copyright_note": p.copyright_note or None,
                **stats[p.name],
            } for p in packages],
            "skipped": skipped,
            "build_seconds": round(time.time() - t0, 1),
        }
        (new / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        _replace_dir(new, out)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return manifest


def summary(manifest: dict, out: Path) -> str:
    """A human summary of a build: per package and per split counts."""
    lines = [f"{'package':<22} {'version':<26} {'docs':>6} {'MB':>7}"]
    for s in manifest["sources"]:
        lines.append(f"{s['package']:<22} {s['version'][:26]:<26} {s['documents']:>6} "
                     f"{s['bytes'] / 1e6:>7.2f}")
    for split, d in manifest["splits"].items():
        tok = f", {d['tokens']:,} tokens (embedded tokenizer)" if d["tokens"] else ""
        lines.append(f"{split}: {d['documents']:,} documents, {d['bytes'] / 1e6:.1f} MB in "
                     f"{len(d['shards'])} shard(s){tok}")
    if manifest["skipped"]:
        lines.append(f"skipped {len(manifest['skipped'])} package(s): "
                     + ", ".join(s["package"] for s in manifest["skipped"]))
    lines.append(f"built in {manifest['build_seconds']}s → {out}")
    return "\n".join(lines)


def train_command(out: Path) -> str:
    """The ``jaxlm train`` command for a corpus built into ``out``."""
    cmd = "jaxlm train configs/pretrain/modern_en.yaml"
    if out.expanduser().resolve() != (Path.home() / ".cache/jaxlm/corpora/modern_en").resolve():
        cmd += f" data.train.0.path={out / 'train'} data.eval.0.path={out / 'validation'}"
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=default_out(),
                   help="output directory (default: %(default)s)")
    p.add_argument("--debs", type=Path, default=None,
                   help="directory for the downloaded .deb files, reused when already there "
                   "(default: a temporary directory, removed afterwards)")
    p.add_argument("--quick", action="store_true",
                   help=f"build from {' and '.join(QUICK)} only (about 1 MB of text; seconds)")
    p.add_argument("--packages", nargs="+", metavar="PKG",
                   help="build from these packages of the source list only")
    p.add_argument("--valid-fraction", type=float, default=0.015,
                   help="share of documents held out for validation (default: %(default)s)")
    p.add_argument("--shard-mb", type=float, default=4.0,
                   help="MB of text per shard, about (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1,
                   help="packages converted in parallel (default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first package that cannot be fetched or read "
                   "(default: report it in one line, skip it and build from the others)")
    p.add_argument("--no-tokens", action="store_true", help="do not count tokens")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE,
                   help="tokens of the byte-level BPE trained on the train split into "
                   f"OUT/{TOKENIZER}, which the modern_en presets read; 0: none "
                   "(default: %(default)s)")
    p.add_argument("--list", action="store_true", help="list the sources and exit")
    args = p.parse_args(argv)

    if args.list:
        for s in SOURCES:
            print(f"{s.packages[0]:<22} {s.license}")
        return 0
    names = list(QUICK) if args.quick else args.packages
    sources = list(SOURCES)
    if names:
        unknown = [n for n in names if not any(n in s.packages for s in SOURCES)]
        if unknown:
            print(f"error: not in the source list: {', '.join(unknown)} (see --list)",
                  file=sys.stderr)
            return 2
        sources = [s for s in SOURCES if any(n in s.packages for n in names)]
    tmp = None
    if args.debs is None:
        tmp = tempfile.TemporaryDirectory(prefix="jaxlm-debs-")
        debs = Path(tmp.name)
    else:
        debs = args.debs.expanduser()
        debs.mkdir(parents=True, exist_ok=True)
    try:
        manifest = build(args.out, sources, debs, args.valid_fraction, args.shard_mb,
                         args.jobs, args.strict, not args.no_tokens, args.vocab_size)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    out = args.out.expanduser().resolve()
    print(summary(manifest, out))
    print(f"train with: {train_command(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
