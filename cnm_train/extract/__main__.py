from cnm_train.extract.cli import main

if __name__ == "__main__":
    main()
