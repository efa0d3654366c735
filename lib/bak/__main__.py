from bak.cli import main

main()
