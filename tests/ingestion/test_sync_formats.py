"""The sync service over the formats beyond plain text: pdf, docx, csv, json and legacy-encoded text. Documents
carry the author and language found, PDF chunks their page, and a bad file of any format fails alone."""

import json

import pytest

from apps.ingestion.models import Chunk, Document, SyncRun
from apps.ingestion.sources import create_source
from tests.conftest import sync_now, write_corpus
from tests.ingestion.test_parsing import LOREM_PAGE, encrypt_pdf, make_docx, make_pdf, zip_bomb_docx

pytestmark = pytest.mark.django_db

CALIBRATION_PAGE = [f"Clause {i}: calibration records for the pressure sensors are kept for seven years." for i in
                    range(40)]

FILES = {
    "manuals/calibration.pdf": make_pdf(
        [LOREM_PAGE, CALIBRATION_PAGE, ["Disposal: return broken sensors to the quality laboratory."]],
        title="Calibration manual", author="Quality Team",
    ),
    "hr/leave.docx": make_docx(
        [("heading", 1, "Parental leave"),
         ("p", "Employees receive twenty-six weeks of fully paid parental leave after six months of service."),
         ("heading", 2, "How to apply"),
         ("p", "Ask the people team to start the paperwork at least eight weeks before the leave begins.")],
        title="Leave policy", author="People Team",
    ),
    "finance/suppliers.csv": (
        b"supplier,contact,terms\n"
        b"Northwind Cleaning,Dana Hill,Invoices are paid thirty days after the end of the month.\n"
        b"Leeds Office Supplies,Omar Patel,Orders above two hundred pounds need a purchase order first.\n"
    ),
    "it/offices.json": json.dumps({
        "title": "Office directory",
        "author": "Facilities",
        "offices": [
            {"city": "Leeds", "notes": "The Leeds office hosts the VPN gateway and the main service desk."},
            {"city": "London", "notes": "The London office has the board room and the visitor reception."},
        ],
    }).encode(),
    "legacy/menu.txt": "Le caf\xe9 cr\xe8me est servi \xe0 la cantine chaque matin avant 9 heures.".encode("latin-1"),
}


@pytest.fixture
def source(tmp_path, roles):
    folder = write_corpus(tmp_path / "formats", FILES)
    return create_source(name="formats", config={"path": str(folder)})


def test_sync_indexes_every_format_with_metadata_and_pages(source):
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.errors
    assert run.counts["new"] == 5 and run.counts["failed"] == 0
    documents = {d.external_id: d for d in Document.objects.filter(source=source)}
    found = {k: (d.title, d.author, d.language, d.content_type) for k, d in documents.items()}
    assert found == {
        "manuals/calibration.pdf": ("Calibration manual", "Quality Team", "en", "application/pdf"),
        "hr/leave.docx": ("Leave policy", "People Team", "en",
                          "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        "finance/suppliers.csv": ("Suppliers", "", "en", "text/csv"),
        "it/offices.json": ("Office directory", "Facilities", "en", "application/json"),
        "legacy/menu.txt": ("Menu", "", "fr", "text/plain"),
    }

    pdf_chunks = list(Chunk.objects.filter(document=documents["manuals/calibration.pdf"]).order_by("ordinal"))
    pages = [c.page for c in pdf_chunks]
    assert pages == sorted(pages) and set(pages) == {1, 2, 3}
    assert pages.count(2) >= 2  # the long page needs more than one 200-token chunk
    for chunk in pdf_chunks:
        assert ("GateKeeper" in chunk.text) == (chunk.page == 1)
        assert ("Clause" in chunk.text) == (chunk.page == 2)
        assert ("Disposal" in chunk.text) == (chunk.page == 3)
    assert not Chunk.objects.filter(document__source=source, page__isnull=False) \
        .exclude(document=documents["manuals/calibration.pdf"]).exists()

    headings = set(Chunk.objects.filter(document=documents["hr/leave.docx"]).values_list("heading", flat=True))
    assert headings == {"Parental leave", "Parental leave > How to apply"}
    csv_text = Chunk.objects.get(document=documents["finance/suppliers.csv"]).text
    assert "supplier: Northwind Cleaning\ncontact: Dana Hill" in csv_text
    json_text = " ".join(Chunk.objects.filter(document=documents["it/offices.json"]).values_list("text", flat=True))
    assert "offices > 2 > city: London" in json_text
    assert Chunk.objects.get(document=documents["legacy/menu.txt"]).text.startswith("Le caf\xe9 cr\xe8me")

    again = sync_now(source)
    assert again.counts["unchanged"] == 5 and again.chunks_embedded == 0


def test_bad_documents_of_every_format_fail_alone(source, tmp_path):
    folder = tmp_path / "formats"
    write_corpus(folder, {
        "bad/locked.pdf": encrypt_pdf(make_pdf([LOREM_PAGE]), user_password="s3cret"),
        "bad/scanned.pdf": make_pdf([[], []]),
        "bad/corrupt.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog",
        "bad/bomb.docx": zip_bomb_docx(),
        "bad/renamed.docx": b"This was a text file once.",
        "bad/broken.json": b'{"offices": [',
        "bad/broken.csv": b'name,notes\nAlice,"never closed\n',
    })
    run = sync_now(source)
    assert run.status == SyncRun.PARTIAL
    reasons = {e["item"]: e["reason"] for e in run.errors}
    assert reasons["bad/locked.pdf"] == "encrypted PDF: it needs a password to open, and ragsite is given none"
    assert reasons["bad/scanned.pdf"].startswith("no text left after parsing")
    assert reasons["bad/corrupt.pdf"].startswith("unreadable PDF")
    assert "zip bomb" in reasons["bad/bomb.docx"]
    assert reasons["bad/renamed.docx"].startswith("not a valid .docx: not a zip archive")
    assert reasons["bad/broken.json"].startswith("invalid JSON")
    assert reasons["bad/broken.csv"].startswith("unreadable CSV: unexpected end of data")
    assert run.counts["failed"] == 7 and run.counts["new"] == 5
    assert not Document.objects.filter(source=source, external_id__startswith="bad/").exists()
