-- Governance per version: group differences on the holdout (challenger and champion, as the gate
-- compared them), the model and data cards (artifact refs) or why they are missing.
ALTER TABLE versions ADD COLUMN fairness jsonb;
ALTER TABLE versions ADD COLUMN champion_fairness jsonb;
ALTER TABLE versions ADD COLUMN cards jsonb;
ALTER TABLE versions ADD COLUMN card_error text;
