file(REMOVE_RECURSE
  "libmednet.a"
)
