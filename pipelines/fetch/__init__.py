"""The fetch job: download media that datasets only reference (Koala-36M clips, Pico-Banana sources)."""
