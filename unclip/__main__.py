from unclip.cli import main

raise SystemExit(main())
