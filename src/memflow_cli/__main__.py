from memflow_cli.cli import main

main()
