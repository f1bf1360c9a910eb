"""Talking to Label Studio: who it is and how to authenticate (`auth`), and its REST API (`client`)."""
