"""The continuity report as PDF (ReportLab, pure Python: no system libraries), from the same
``continuity.Continuity`` as the HTML, so the two never say different things.

A one-page summary first (what the record is, whether it checked, every exhibit), then each item's
custody steps. Text is real PDF text (Helvetica), so exhibit references and hashes can be searched
and copied.
"""

from __future__ import annotations

from io import BytesIO
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from .continuity import Continuity, check_words, item_facts, summary_rows

_base = getSampleStyleSheet()
H1 = _base["Heading1"]
H2 = _base["Heading2"]
BODY = ParagraphStyle("body", parent=_base["BodyText"], fontSize=9, leading=11)
CELL = ParagraphStyle("cell", parent=BODY, fontSize=7.5, leading=9, splitLongWords=True)
HASH = ParagraphStyle("hash", parent=CELL, fontName="Courier", fontSize=6.5, leading=8)
BAD = ParagraphStyle("bad", parent=BODY, textColor=colors.HexColor("#b00000"), fontName="Helvetica-Bold")
GRID = TableStyle(
    [
        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
)


def _p(text: object, style: ParagraphStyle = CELL) -> Paragraph:
    return Paragraph(escape("" if text is None else str(text)), style)


def _pairs(pairs: list[tuple[str, object]], width: float) -> Table:
    rows = [[_p(k, BODY), _p(v, BODY)] for k, v in pairs if v not in (None, "")]
    table = Table(rows, colWidths=[60 * mm, width - 60 * mm])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def render_pdf(report: Continuity) -> bytes:
    out = BytesIO()
    size = landscape(A4)
    doc = SimpleDocTemplate(
        out,
        pagesize=size,
        leftMargin=12 * mm,
        rightMargin=12 * mm,
        topMargin=12 * mm,
        bottomMargin=12 * mm,
        title=report.title,
        subject=report.subject,
        author="Evidence service",
    )
    width = size[0] - 24 * mm
    flow: list[object] = [
        _p(report.title, H1),
        _pairs(
            [
                ("Subject", report.subject),
                ("Made (UTC)", report.generated_at),
                ("Made for", report.generated_for),
                ("Service signing key fingerprint (SHA-256)", report.key_fingerprint),
                ("Custody log tree head", report.tree_head),
            ],
            width,
        ),
        Spacer(1, 4 * mm),
        _p(check_words(report), BODY if report.checks else BAD),
    ]
    flow += [_p(f"- {p}", BAD) for p in report.problems]
    flow += [Spacer(1, 4 * mm), _p("Summary", H2)]
    rows = [
        [_p(h) for h in ("Exhibit", "What", "Recorded (camera time, UTC)", "Recorded by", "Custody steps")]
    ]
    rows += [[_p(c) for c in row] for row in summary_rows(report)]
    summary = Table(rows, colWidths=[30 * mm, 60 * mm, 80 * mm, width - 195 * mm, 25 * mm], repeatRows=1)
    summary.setStyle(GRID)
    flow += [
        summary,
        Spacer(1, 3 * mm),
        _p(
            "Compare the signing key fingerprint with the one the trust publishes, never only with this "
            "report. Each step gives its custody entry's hash, which the entry in the signed ledger (and "
            "in an export package's custody files) must have.",
            BODY,
        ),
    ]
    for it in report.items:
        flow += [
            PageBreak(),
            _p(f"Exhibit {it.exhibit or '(none)'}: {it.kind.replace('_', ' ')}, {it.copy_type}", H2),
            _pairs(item_facts(it), width),
        ]
        flow += [_p(f"- {p}", BAD) for p in it.problems]
        rows = [
            [
                _p(h)
                for h in (
                    "#",
                    "When (UTC)",
                    "What, and what it proves",
                    "Who",
                    "Where",
                    "Details and hashes",
                    "Entry hash",
                )
            ]
        ]
        for st in it.steps:
            if st.withheld:
                what = _p(f"{st.what}: withheld ({st.withheld})")
                rows.append([_p(st.item_seq), _p(st.at), what, "", "", "", _p(st.entry_hash, HASH)])
                continue
            details = [_p(f) for f in st.facts] + [_p(f"{k}: {v}", HASH) for k, v in st.hashes]
            rows.append(
                [
                    _p(st.item_seq),
                    _p(st.at),
                    [_p(st.what, ParagraphStyle("w", parent=CELL, fontName="Helvetica-Bold")), _p(st.proves)],
                    _p(st.who),
                    _p(st.where),
                    details,
                    _p(st.entry_hash, HASH),
                ]
            )
        steps = Table(
            rows,
            colWidths=[8 * mm, 30 * mm, 55 * mm, 35 * mm, 40 * mm, width - 218 * mm, 50 * mm],
            repeatRows=1,
            # A step with many details (a redaction's settings, tracks and edits) may be taller
            # than a page: it goes on over the page break rather than failing the whole package.
            splitInRow=1,
        )
        steps.setStyle(GRID)
        flow += [Spacer(1, 3 * mm), steps]
    doc.build(flow)
    return out.getvalue()
