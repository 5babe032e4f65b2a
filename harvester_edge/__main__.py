from harvester_edge.cli import main

main()
