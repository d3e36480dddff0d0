from ttsyncd.cli import main

raise SystemExit(main())
