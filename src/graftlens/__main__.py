from graftlens.cli import main

main()
