from cxrjobs.cli import main

main()
