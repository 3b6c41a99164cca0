"""MediaWiki XML dumps → clean article text.

`iter_articles` streams `(page_id, title, wikitext)` from a `*pages-articles*.xml.bz2` dump;
`clean_wikitext` strips the markup with mwparserfromhell (the parser TFDS's own `wikipedia`
builder uses): templates, references, tables, files, categories and interlanguage links go;
link and formatting text stays; section headings stay as their own lines.
"""

import bz2
import re
from typing import Iterator
import xml.etree.ElementTree as ET

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Tag, Text, Wikilink

from ban_jax.errors import UserError

# Tags whose content is not running prose.
_DROP_TAGS = frozenset({
    "ref", "references", "gallery", "math", "chem", "timeline", "score", "table", "imagemap",
    "syntaxhighlight", "source", "pre", "graph", "mapframe", "hiero", "noinclude", "includeonly",
})
# Link namespaces that carry no prose (files, categories) in an English dump.
_DROP_LINK_PREFIXES = ("file:", "image:", "media:", "category:")
# Interlanguage links ([[fr:Anarchisme]], [[zh-min-nan:...]]) and the sister-project prefixes; a
# title such as [[Batman: Year One]] or [[Mission:Impossible]] is prose and stays.
_INTERWIKI = re.compile(
    r"^:?(?:[a-z]{2,3}(?:-[a-z]{2,8})*|(?i:wikt|wiktionary|commons|wikisource|wikiquote|"
    r"wikibooks|wikinews|wikiversity|wikivoyage|wikispecies|species|wikidata|meta|mw|"
    r"simple|voy|w|d|s|q|n|b|v)):")
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t]+")
_TABLE_ROW = re.compile(r"^\s*(\||!|\{\|)")
_REF_TAIL = re.compile(r"<ref[^>]*>.*?(</ref>|$)", re.IGNORECASE | re.MULTILINE)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_FILE_LINK = re.compile(r"\[\[(?:file|image|media|category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]",
                        re.IGNORECASE)
_LINK = re.compile(r"\[\[([^|\]]*)(?:\|([^\]]*))?\]\]")


def clean_wikitext(wikitext: str) -> str:
  """Returns the plain prose of one article's wikitext."""
  text = _residue(_render(mwparserfromhell.parse(wikitext).nodes))
  lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")
           if not _TABLE_ROW.match(line)]
  return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _residue(text: str) -> str:
  # Malformed markup (an unclosed <ref>, a table the parser kept as text) reaches here as plain
  # text: drop what is left of it.
  text = _REF_TAIL.sub("", text)
  while True:
    new = _TEMPLATE.sub("", text)
    if new == text:
      break
    text = new
  text = _FILE_LINK.sub("", text)
  return _LINK.sub(lambda m: m.group(2) if m.group(2) is not None else m.group(1), text)


def _render(nodes) -> str:
  # One pass over the parse tree: Wikicode.remove() searches the whole tree per call, which made
  # cleaning quadratic in article length.
  out = []
  for node in nodes:
    if isinstance(node, Text):
      out.append(node.value)
    elif isinstance(node, Wikilink):
      title = str(node.title).strip()
      if title.lower().startswith(_DROP_LINK_PREFIXES) or _INTERWIKI.match(title):
        continue
      out.append(_render((node.text if node.text is not None else node.title).nodes))
    elif isinstance(node, ExternalLink):
      if node.title is not None:
        out.append(_render(node.title.nodes))
    elif isinstance(node, Heading):
      out.append("\n" + _render(node.title.nodes).strip() + "\n")
    elif isinstance(node, Tag):
      if str(node.tag).strip().lower() in _DROP_TAGS:
        continue
      if node.contents is not None:
        out.append(_render(node.contents.nodes))
      elif str(node.tag).strip().lower() == "br":
        out.append("\n")
    elif isinstance(node, HTMLEntity):
      out.append(node.normalize())
    # Templates, comments, arguments and anything else carry no prose.
  return "".join(out)


def iter_articles(path: str) -> Iterator[tuple[int, str, str]]:
  """Streams the main-namespace, non-redirect pages of a MediaWiki XML dump.

  Args:
    path: a `.xml.bz2` (or plain `.xml`) MediaWiki export.

  Yields:
    (page_id, title, wikitext) per article, in dump order.

  Raises:
    UserError: the file is missing, not bzip2/XML, or truncated.
  """
  opener = bz2.open if str(path).endswith(".bz2") else open
  try:
    with opener(path, "rb") as f:
      page = {}
      root = None
      for event, elem in ET.iterparse(f, events=("start", "end")):
        if event == "start":
          if root is None:
            root = elem
          continue
        tag = elem.tag.rsplit("}", 1)[-1]
        if tag in ("title", "ns", "text") or (tag == "id" and "id" not in page):
          page.setdefault(tag, elem.text or "")
        elif tag == "redirect":
          page["redirect"] = True
        elif tag == "page":
          if page.get("ns") == "0" and not page.get("redirect"):
            yield int(page["id"]), page["title"], page.get("text", "")
          page = {}
          # Cleared pages stay attached to the root: on a full dump that is millions of them.
          root.clear()
        elif tag == "revision":
          elem.clear()
  except FileNotFoundError as e:
    raise UserError(f"MediaWiki dump not found: {path}. Pass an existing "
                    "*pages-articles*.xml.bz2 (see README, 'Data').") from e
  except (OSError, EOFError, ET.ParseError) as e:
    raise UserError(f"MediaWiki dump {path} is corrupt or truncated ({type(e).__name__}: {e}). "
                    "Download it again (see README, 'Data').") from e
