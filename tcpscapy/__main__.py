from tcpscapy.cli import main

main()
