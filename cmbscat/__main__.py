from cmbscat.cli import main

main()
