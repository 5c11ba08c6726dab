"""Sample application classes for the esindexer demo database.

They live in their own importable package (not in writer.py, which runs as
``__main__``) because ZODB pickles record each object's class by module path: the
names ``esindexer_demo.content.Document`` etc. must stay the same for as long as the
demo database exists, and they are what appears in the ``class`` field in Kibana.
"""
