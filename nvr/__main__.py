from nvr.cli import main

main()
