from __future__ import annotations

from hybridiso.main import main

raise SystemExit(main())
