"""`helm test` check: the service is ready and classifies one image.

Runs in the release's own image (Python, httpx and Pillow are there). IMAGEIQ_URL is the
Service; IMAGEIQ_API_KEY a key with the `classify` scope (unset when auth is off).
"""

import io
import os
import sys

import httpx
from PIL import Image

url = os.environ["IMAGEIQ_URL"].rstrip("/")
key = os.environ.get("IMAGEIQ_API_KEY")
headers = {"Authorization": f"Bearer {key}"} if key else {}

with httpx.Client(timeout=30.0) as client:
    ready = client.get(f"{url}/readyz")
    print("GET /readyz ->", ready.status_code, ready.text[:300])
    if ready.status_code != 200:
        sys.exit("not ready")
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(image, format="PNG")
    answer = client.post(
        f"{url}/v1/classify",
        headers=headers,
        files={"image": ("smoke.png", image.getvalue(), "image/png")},
    )
    print("POST /v1/classify ->", answer.status_code, answer.text[:300])
    if answer.status_code != 200:
        sys.exit("classify failed")
    body = answer.json()
    if not body.get("predictions") or "model" not in body:
        sys.exit("classify answered without predictions")
print("ok")
