"""``python -m gradcam_engine.demo``."""

from .main import main

raise SystemExit(main())
