from mscale.cli import main

raise SystemExit(main())
