from ldct.cli import main

raise SystemExit(main())
