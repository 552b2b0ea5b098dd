from vmsnapd.cli import main

raise SystemExit(main())
