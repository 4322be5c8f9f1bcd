from dbsentry.cli import main

main()
