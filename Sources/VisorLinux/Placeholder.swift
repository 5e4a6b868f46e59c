// Linux boot support.
