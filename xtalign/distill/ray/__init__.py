"""The Ray room (the only place Ray is imported): `cluster` (connection, placement group, the generic
`WorkerActor`, deaths as one line), `backend` (teachers and student ranks as actors), `placement`
(what a run reserves; pure, no Ray)."""
