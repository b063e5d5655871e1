"""What a person sees: figures (:mod:`.plots`), HTML tables (:mod:`.html`) and notebook widgets
(:mod:`.widgets`). Data comes from the library; nothing here computes a result it does not draw."""
