from nfqproxy.cli import main

raise SystemExit(main())
