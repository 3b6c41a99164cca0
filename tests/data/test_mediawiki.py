"""MediaWiki XML → clean text."""

import bz2

import pytest

from ban_jax.data import mediawiki
from ban_jax.errors import UserError

WIKITEXT = """{{Infobox person|name=Ada|born=1815}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref>Toole, 1992.</ref>
[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]].]]

== Early life ==
She was born in [[London]] &amp; raised by her mother.<!-- a comment -->
{| class="wikitable"
|-
| cell || other
|}
See [https://example.org the notes] and {{cite book|title=X}}.
<math>x^2</math>Done.

[[Category:Mathematicians]]
[[fr:Ada Lovelace]]"""


def test_clean_keeps_prose_and_drops_markup():
  text = mediawiki.clean_wikitext(WIKITEXT)
  assert text.startswith("Ada Lovelace was an English mathematician.")
  assert "Early life" in text.split("\n")            # heading kept as its own line
  assert "She was born in London & raised by her mother." in text
  assert "See the notes and ." in text
  assert "Done." in text
  for junk in ("Infobox", "Toole", "portrait", "Ada.jpg", "cell", "x^2", "Category",
               "Mathematicians", "fr:", "comment", "cite", "[[", "{{", "<ref", "==", "'''"):
    assert junk not in text, junk


def _dump(pages: str) -> bytes:
  return bz2.compress(f"""<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>{pages}</mediawiki>""".encode())


def _page(pid, title, text, ns=0, redirect=False):
  red = f'<redirect title="{title}x" />' if redirect else ""
  return (f"<page><title>{title}</title><ns>{ns}</ns><id>{pid}</id>{red}<revision><id>9{pid}"
          f"</id><contributor><id>77</id></contributor><text>{text}</text></revision></page>")


def test_iter_articles_skips_redirects_and_other_namespaces(tmp_path):
  path = tmp_path / "x-pages-articles.xml.bz2"
  path.write_bytes(_dump(_page(1, "A", "alpha") + _page(2, "B", "#REDIRECT [[A]]", redirect=True)
                         + _page(3, "Talk:A", "chat", ns=1) + _page(4, "C", "gamma")))
  assert list(mediawiki.iter_articles(str(path))) == [(1, "A", "alpha"), (4, "C", "gamma")]


@pytest.mark.parametrize("content", [b"not bzip2 at all", None])
def test_corrupt_or_truncated_dump_is_a_user_error(tmp_path, content):
  path = tmp_path / "x-pages-articles.xml.bz2"
  data = _dump(_page(1, "A", "alpha " * 2000) + _page(2, "B", "beta"))
  path.write_bytes(content if content is not None else data[: len(data) // 2])
  with pytest.raises(UserError, match="corrupt or truncated"):
    list(mediawiki.iter_articles(str(path)))


def test_missing_dump_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="not found"):
    list(mediawiki.iter_articles(str(tmp_path / "nope.xml.bz2")))
