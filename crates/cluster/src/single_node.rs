//! SingleNode (being written)
