from shoeseg.cli import main

main()
