from podgate_sandbox.cli import main

main()
