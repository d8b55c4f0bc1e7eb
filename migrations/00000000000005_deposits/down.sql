DROP TABLE chain_blocks;
DROP TABLE deposits;
