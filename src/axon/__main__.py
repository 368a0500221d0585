from axon.cli.main import main

main()
