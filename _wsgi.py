from backend.web.app import create_app

app = create_app()
