DROP TABLE auth_tokens;
DROP TABLE challenges;
