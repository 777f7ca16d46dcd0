"""The HTS-RL runtime: tickets, storages, the swap barrier, batched inference, learner, scheduler."""
