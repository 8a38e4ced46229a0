"""A report as a list of blocks, rendered to Markdown and to self-contained HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any


def fmt(v: Any, spec: str = ".3f", *, inf: str = "inf") -> str:
    """A number for a table cell: "n/a" for None, ``inf`` for infinity."""
    if v is None:
        return "n/a"
    if isinstance(v, float) and v == float("inf"):
        return inf
    return format(v, spec)


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (headers, rows)))

    def img(self, src: str, alt: str) -> None:
        self.blocks.append(("img", (src, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, content in self.blocks:
            if kind == "h2":
                out += [f"## {content}", ""]
            elif kind == "p":
                out += [str(content), ""]
            elif kind == "table":
                headers, rows = content  # type: ignore[misc]
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "---|" * len(headers))
                out += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                src, alt = content  # type: ignore[misc]
                out += [f"![{alt}]({src})", ""]
            elif kind == "code":
                out += ["```", str(content).rstrip(), "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, content in self.blocks:
            if kind == "h2":
                body.append(f"<h2>{e(str(content))}</h2>")
            elif kind == "p":
                body.append(f"<p>{e(str(content))}</p>")
            elif kind == "table":
                headers, rows = content  # type: ignore[misc]
                head = "".join(f"<th>{e(h)}</th>" for h in headers)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "img":
                src, alt = content  # type: ignore[misc]
                body.append(
                    f'<figure><img src="{e(src)}" alt="{e(alt)}"><figcaption>{e(alt)}'
                    "</figcaption></figure>"
                )
            elif kind == "code":
                body.append(f"<pre>{e(str(content))}</pre>")
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body)
            + "</body></html>\n"
        )


def _cell(text: str) -> str:
    t = html.escape(text)
    if text.startswith("PASS"):
        return f"<span class='pass'>{t}</span>"
    if text.startswith("FAIL"):
        return f"<span class='fail'>{t}</span>"
    return t


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#222}table{border-collapse:collapse;margin:0.5rem 0 1rem}td,th{border:1px solid "
    "#ccc;padding:0.25rem 0.6rem;text-align:right}th{background:#f2f2f2}td:first-child,"
    "th:first-child{text-align:left}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;"
    "font-weight:600}img{max-width:100%}figcaption{font-size:0.85rem;color:#555}"
    "pre{background:#f6f8fa;padding:0.6rem;overflow-x:auto}"
)
