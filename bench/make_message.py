#!/usr/bin/env python3
"""Writes a ~20 KB newsletter-style HTML message, quoted-printable, with a plain-text
alternative, as Python's email package generates it (a real generator, not hand-written)."""
import sys
from email.message import EmailMessage

rows = []
for i in range(66):
    rows.append(
        f'<tr><td style="padding:8px;font-family:Arial,sans-serif;color:#333">Item {i}: '
        f'caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u2014 news about thing {i} that matters = {i * 7}%</td>'
        f'<td><a href="https://example.com/item/{i}?utm_source=news&amp;id={i}">Read more</a></td></tr>'
    )
html = (
    "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>News</title></head>"
    "<body style=\"margin:0\"><table width=\"100%\">" + "\n".join(rows) + "</table></body></html>"
)
msg = EmailMessage()
msg["From"] = "News <news@example.com>"
msg["To"] = "Bob <bob@example.net>"
msg["Subject"] = "Weekly news"
msg["Message-ID"] = "<bench@example.com>"
msg.set_content("Plain text version of the weekly news.\n" * 20)
msg.add_alternative(html, subtype="html", cte="quoted-printable")
sys.stdout.buffer.write(msg.as_bytes())
