from shoeseg_app.cli import main

main()
