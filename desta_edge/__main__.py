from desta_edge.cli import main

raise SystemExit(main())
